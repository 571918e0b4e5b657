"""The identity provider's signing keys, cached, with a cooldown on refetches.

Keys are fetched (by PyJWT's `PyJWKClient`, on a worker thread so the event loop never
waits on the network) when first needed, again once they are `max_age_s` old, and when a
token names a `kid` we do not hold: that is how a rotated key is picked up without a
restart. Such a refetch happens at most once per `cooldown_s`, counted from the last
attempt whether it succeeded or not, so tokens with random `kid`s (or a provider that is
down) cannot turn into a flood of fetches. Concurrent callers share one fetch.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping

from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWKClientError, PyJWKError

from services.core.logging import get_logger

log = get_logger(__name__)

Fetch = Callable[[], Awaitable[Mapping[str, PyJWK]]]
"""Returns the provider's current signing keys by `kid`; raises `KeyFetchError`."""


class KeyFetchError(Exception):
    """The identity provider could not be reached or sent no usable keys."""


class HttpKeySource:
    """Fetches the JWKS from `jwks_url`, or from the `jwks_uri` the issuer's OpenID
    discovery document names (discovered once, then remembered)."""

    def __init__(self, *, jwks_url: str | None, issuer: str | None, timeout_s: float) -> None:
        if jwks_url is None and issuer is None:
            raise ValueError("a JWKS URL or an issuer to discover it from is needed")
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._timeout_s = timeout_s

    async def __call__(self) -> Mapping[str, PyJWK]:
        return await asyncio.to_thread(self._fetch)

    def _fetch(self) -> dict[str, PyJWK]:
        try:
            if self._jwks_url is None:
                self._jwks_url = self._discover()
            client = PyJWKClient(self._jwks_url, cache_jwk_set=False, timeout=self._timeout_s)
            keys = client.get_signing_keys(refresh=True)
        except (PyJWKClientError, PyJWKError, OSError, ValueError) as exc:
            raise KeyFetchError(str(exc)) from exc
        return {key.key_id: key for key in keys if key.key_id is not None}

    def _discover(self) -> str:
        assert self._issuer is not None
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"the issuer {self._issuer!r} is not an http(s) URL")
        with urllib.request.urlopen(url, timeout=self._timeout_s) as response:
            document = json.load(response)
        if not isinstance(document, dict) or document.get("issuer") != self._issuer:
            raise ValueError(f"the discovery document at {url} names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError(f"the discovery document at {url} has no jwks_uri")
        return jwks_uri


class KeyCache:
    def __init__(
        self,
        fetch: Fetch,
        *,
        max_age_s: float,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._keys: Mapping[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._failing = False
        self._lock: asyncio.Lock | None = None
        self.fetches = 0
        """Fetches attempted so far (tests and the log read it)."""

    async def key(self, kid: str | None) -> PyJWK | None:
        """The signing key named `kid` (a token without one may use a sole key), or None.

        Raises `KeyFetchError` only when no keys were ever fetched and fetching fails now.
        """
        if self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age_s:
            await self._refresh(stale_at=self._fetched_at)
        found = self._lookup(kid)
        if found is None and self._cooled_down():
            await self._refresh(stale_at=self._fetched_at)
            found = self._lookup(kid)
        return found

    def _lookup(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _cooled_down(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._cooldown_s

    async def _refresh(self, *, stale_at: float | None) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._fetched_at != stale_at:
                return  # another caller fetched while we waited
            if self._failing and not self._cooled_down():  # it failed a moment ago
                if not self._keys:
                    raise KeyFetchError("the identity provider was unreachable moments ago")
                return  # keep the keys we have
            self._attempted_at = self._clock()
            self.fetches += 1
            try:
                keys = await self._fetch()
            except KeyFetchError as exc:
                self._failing = True
                log.warning("jwks_fetch_failed", error=str(exc), have_keys=bool(self._keys))
                if not self._keys:
                    raise
                return
            self._keys, self._failing = dict(keys), False
            self._fetched_at = self._clock()
            log.info("jwks_fetched", kids=sorted(self._keys))
