"""Malformed credentials in every position, with authentication on: only 401s, never 5xx.

The Serve-level fuzz test (tests/integration/test_fuzz.py) runs the dev app, where
authentication is off; this one aims at the verifier itself. Seeded, so a failure replays.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable

from tests.auth.conftest import EnvFactory, bearer
from tests.idp import LocalIdP

SEED = 20261127
ROUNDS = 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _mutations(idp: LocalIdP, rng: random.Random) -> list[Callable[[], dict[str, str]]]:
    """Each returns request headers carrying one malformed or misplaced credential."""
    valid = idp.token()

    def garbage() -> dict[str, str]:
        size = rng.choice([0, 1, 7, 64, 700, 9000])
        text = "".join(chr(rng.randrange(33, 127)) for _ in range(size))
        return {"Authorization": f"Bearer {text}"}

    def three_random_parts() -> dict[str, str]:
        parts = [_b64(rng.randbytes(rng.randrange(0, 80))) for _ in range(3)]
        return bearer(".".join(parts))

    def json_header_random_body() -> dict[str, str]:
        alg = rng.choice(["RS256", "ES256", "HS256", "none", "PS512", "", None, 7])
        header = {"alg": alg, "kid": rng.choice([None, "x", idp.published[0], "../../etc"])}
        body = rng.choice([{}, {"sub": 1}, [], "str", {"exp": "soon", "iss": None}])
        return bearer(f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}.")

    def flipped_bit() -> dict[str, str]:
        # One character of the payload changed to another, away from the segment's end
        # (its last character may carry only padding bits): the signature no longer holds.
        header, payload, signature = valid.split(".")
        index = rng.randrange(len(payload) - 2)
        choices = [c for c in "ABCxyz019-_" if c != payload[index]]
        changed = payload[:index] + rng.choice(choices) + payload[index + 1 :]
        return bearer(f"{header}.{changed}.{signature}")

    def truncated() -> dict[str, str]:
        return bearer(valid[: rng.randrange(1, len(valid) - 1)])

    def wrong_scheme() -> dict[str, str]:
        scheme = rng.choice(["Basic", "Token", "bearer:", "Bearer  Bearer", "JWT", ""])
        return {"Authorization": f"{scheme} {valid}"}

    def elsewhere() -> dict[str, str]:
        name = rng.choice(["X-Access-Token", "Cookie", "Proxy-Authorization", "X-Api-Key"])
        value = f"access_token={valid}" if name == "Cookie" else valid
        return {name: value}

    def bad_utf8() -> dict[str, str]:
        raw = bytes(b for b in rng.randbytes(32) if b not in b"\r\n\x00")
        return {"Authorization": "Bearer " + raw.decode("latin-1")}

    return [
        garbage,
        three_random_parts,
        json_header_random_body,
        flipped_bit,
        truncated,
        wrong_scheme,
        elsewhere,
        bad_utf8,
    ]


ROUTES = [
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/job_0123456789abcdef"),
    ("GET", "/v1/jobs/job_0123456789abcdef/events"),
    ("DELETE", "/v1/jobs/job_0123456789abcdef"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/models"),
    ("GET", "/openapi.json"),
]


async def test_malformed_credentials_anywhere_get_only_401(
    auth_env: EnvFactory, idp: LocalIdP
) -> None:
    env = await auth_env()
    rng = random.Random(SEED)
    mutations = _mutations(idp, rng)
    statuses: dict[int, int] = {}
    for _ in range(ROUNDS):
        method, path = rng.choice(ROUTES)
        mutation = rng.choice(mutations)
        headers = mutation()
        files = {"file": ("a.wav", rng.randbytes(64))} if method == "POST" else None
        data = {"model": "whisper-1"} if method == "POST" else None
        raw = [(name.encode(), value.encode("latin-1")) for name, value in headers.items()]
        response = await env.client.request(method, path, headers=raw, files=files, data=data)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        # The message names the mutation, never the credential (the log scan reads it).
        assert response.status_code == 401, (method, path, mutation.__name__, response.status_code)
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert statuses == {401: ROUNDS}
    # The verifier is unharmed: a good token still passes.
    assert (await env.client.get("/v1/jobs", headers=bearer(idp.token()))).status_code == 200
