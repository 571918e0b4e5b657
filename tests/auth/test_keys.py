"""The signing-key cache: random kids cannot flood the provider, rotation is picked up,
a slow or failing provider never blocks the event loop or takes known keys away."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Mapping

import pytest
from jwt import PyJWK

from deployments.auth import Authenticator, build_authenticator
from services.auth.errors import AuthenticationError
from services.auth.keys import KeyCache, KeyFetchError
from tests.auth.conftest import EnvFactory, auth_settings, bearer
from tests.conftest import report
from tests.idp import LocalIdP


async def _warm(env_client: object, idp: LocalIdP) -> None:
    response = await env_client.get("/v1/jobs", headers=bearer(idp.token()))  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text


def _random_kid(token: str) -> str:
    """The token with a random `kid` in its header (no new signature needed: the kid is
    looked up before any signature is checked)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": uuid.uuid4().hex}
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return encoded + token[token.index(".") :]


async def _refused(authenticator: Authenticator, token: str) -> str:
    assert authenticator.verifier is not None
    try:
        await authenticator.verifier.verify(token)
    except AuthenticationError as exc:
        return exc.reason
    return "accepted"


async def test_1000_random_kids_cause_at_most_one_fetch_per_cooldown(idp: LocalIdP) -> None:
    authenticator = build_authenticator(auth_settings(idp, jwks_cooldown_s=30.0))
    assert authenticator.verifier is not None
    valid = idp.token()
    assert (await authenticator.verifier.verify(valid)).owner == f"{idp.issuer}#alice"
    before = idp.jwks_fetches
    started = time.perf_counter()
    reasons = await asyncio.gather(
        *(_refused(authenticator, _random_kid(valid)) for _ in range(1000))
    )
    elapsed = time.perf_counter() - started
    assert reasons == ["unknown_kid"] * 1000
    report(
        f"auth: 1000 tokens with random kids -> {idp.jwks_fetches - before} JWKS fetch(es) "
        f"in {elapsed:.1f} s (cooldown 30 s)"
    )
    assert idp.jwks_fetches - before <= 1, idp.jwks_fetches - before
    assert elapsed < 30.0  # all within one cooldown, so one fetch is the bound


async def test_random_kids_over_several_cooldowns(idp: LocalIdP) -> None:
    cooldown = 0.3
    authenticator = build_authenticator(auth_settings(idp, jwks_cooldown_s=cooldown))
    valid = idp.token()
    assert await _refused(authenticator, valid) == "accepted"
    before = idp.jwks_fetches
    started = time.perf_counter()
    sent = 0
    while time.perf_counter() - started < 4 * cooldown:
        assert await _refused(authenticator, _random_kid(valid)) == "unknown_kid"
        sent += 1
        await asyncio.sleep(0.005)
    periods = (time.perf_counter() - started) / cooldown
    fetches = idp.jwks_fetches - before
    report(f"auth: {sent} random kids over {periods:.1f} cooldowns -> {fetches} JWKS fetches")
    assert sent >= 10
    assert 1 <= fetches <= int(periods) + 1, (fetches, periods)


async def test_a_rotated_key_is_accepted_within_one_cooldown(
    auth_env: EnvFactory, idp: LocalIdP
) -> None:
    cooldown = 0.5
    env = await auth_env(jwks_cooldown_s=cooldown)
    await _warm(env.client, idp)
    new_kid = idp.add_key("RSA")  # the realm rotates: a new key is published
    started = time.perf_counter()
    token = idp.token(new_kid)
    while (await env.client.get("/v1/jobs", headers=bearer(token))).status_code != 200:
        assert time.perf_counter() - started < cooldown + 0.5, "rotated key not picked up"
        await asyncio.sleep(0.05)
    waited = time.perf_counter() - started
    report(f"auth: rotated key accepted after {waited:.2f} s (cooldown {cooldown} s)")
    assert waited <= cooldown + 0.5
    idp.withdraw(new_kid)


async def test_a_withdrawn_key_is_refused_once_the_keys_are_refreshed(
    auth_env: EnvFactory, idp: LocalIdP
) -> None:
    env = await auth_env(jwks_max_age_s=0.3)
    kid = idp.add_key("EC")
    token = idp.token(kid)
    assert (await env.client.get("/v1/jobs", headers=bearer(token))).status_code == 200
    idp.withdraw(kid)
    await asyncio.sleep(0.4)
    assert (await env.client.get("/v1/jobs", headers=bearer(token))).status_code == 401


async def test_a_slow_provider_does_not_block_the_event_loop(
    auth_env: EnvFactory, idp: LocalIdP
) -> None:
    env = await auth_env()
    idp.delay_s = 1.5
    try:
        verifying = asyncio.create_task(env.client.get("/v1/jobs", headers=bearer(idp.token())))
        await asyncio.sleep(0.1)  # the fetch is under way on a worker thread
        started = time.perf_counter()
        assert (await env.client.get("/healthz")).status_code == 200
        assert time.perf_counter() - started < 1.0
        assert not verifying.done()  # the loop served /healthz while the fetch waited
        assert (await verifying).status_code == 200
    finally:
        idp.delay_s = 0.0


async def test_provider_down_at_start_is_503_not_401(auth_env: EnvFactory, idp: LocalIdP) -> None:
    env = await auth_env()
    idp.down = True
    try:
        response = await env.client.get("/v1/jobs", headers=bearer(idp.token()))
    finally:
        idp.down = False
    assert response.status_code == 503
    assert "Retry-After" in response.headers


async def test_discovery_happens_once(auth_env: EnvFactory, idp: LocalIdP) -> None:
    env = await auth_env(jwks_max_age_s=0.1)
    before = idp.discovery_fetches
    for _ in range(3):
        await _warm(env.client, idp)
        await asyncio.sleep(0.15)
    assert idp.discovery_fetches - before == 1


# -- the cache alone, with a fake clock and a fake fetch -------------------------------


class FakeProvider:
    def __init__(self, keys: Mapping[str, PyJWK]) -> None:
        self.keys = dict(keys)
        self.calls = 0
        self.failing = False

    async def __call__(self) -> Mapping[str, PyJWK]:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.failing:
            raise KeyFetchError("down")
        return self.keys


@pytest.fixture
def some_key(idp: LocalIdP) -> tuple[str, PyJWK]:
    kid = idp.published[0]
    (entry,) = [k for k in idp.jwks()["keys"] if k["kid"] == kid]
    return kid, PyJWK(entry)


async def test_concurrent_first_callers_share_one_fetch(some_key: tuple[str, PyJWK]) -> None:
    kid, key = some_key
    provider = FakeProvider({kid: key})
    cache = KeyCache(provider, max_age_s=300, cooldown_s=30)
    found = await asyncio.gather(*(cache.key(kid) for _ in range(50)))
    assert all(k is key for k in found)
    assert provider.calls == 1


async def test_a_failing_provider_keeps_known_keys_and_cools_down(
    some_key: tuple[str, PyJWK],
) -> None:
    kid, key = some_key
    now = [0.0]
    provider = FakeProvider({kid: key})
    cache = KeyCache(provider, max_age_s=10, cooldown_s=5, clock=lambda: now[0])
    assert await cache.key(kid) is key
    provider.failing = True
    now[0] = 11.0  # keys are stale: a refresh is tried, fails, the old keys stay
    assert await cache.key(kid) is key
    assert provider.calls == 2
    for _ in range(100):  # unknown kids while down: no fetch within the cooldown
        assert await cache.key(uuid.uuid4().hex) is None
    assert provider.calls == 2
    now[0] = 16.5
    assert await cache.key("new") is None
    assert provider.calls == 3


async def test_no_keys_and_provider_down_raises_without_retrying_each_call(
    some_key: tuple[str, PyJWK],
) -> None:
    kid, key = some_key
    now = [0.0]
    provider = FakeProvider({kid: key})
    provider.failing = True
    cache = KeyCache(provider, max_age_s=10, cooldown_s=5, clock=lambda: now[0])
    for _ in range(20):
        with pytest.raises(KeyFetchError):
            await cache.key(kid)
    assert provider.calls == 1
    provider.failing = False
    now[0] = 5.0
    assert await cache.key(kid) is key
