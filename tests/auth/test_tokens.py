"""Who gets in: 401 for every bad token, 403 without the role, the probes and docs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest
from structlog.testing import capture_logs

from tests.auth.conftest import EnvFactory, bearer
from tests.conftest import ENGLISH
from tests.idp import LocalIdP


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def _alg_none(idp: LocalIdP) -> str:
    return _segments({"alg": "none", "typ": "JWT", "kid": idp.published[0]}, idp.claims()) + "."


def _hs256_with_public_key(idp: LocalIdP) -> str:
    """Key confusion: HMAC keyed with the RSA public key the JWKS publishes."""
    kid = idp.published[0]
    signing_input = _segments({"alg": "HS256", "typ": "JWT", "kid": kid}, idp.claims())
    mac = hmac.new(idp.public_pem(kid), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _tampered(idp: LocalIdP) -> str:
    header, _, signature = idp.token().split(".")
    forged = _b64(json.dumps(idp.claims(client_roles=("transcriber", "admin"))).encode())
    return f"{header}.{forged}.{signature}"


def _unknown_kid(idp: LocalIdP) -> str:
    kid = idp.add_key("RSA", publish=False)
    return idp.token(kid)


Case = Callable[[LocalIdP], tuple[str, dict[str, str]]]
"""A request (path with query, headers) that must get 401, and the logged reason."""

BAD: dict[str, tuple[Case, str]] = {
    "no token": (lambda idp: ("/v1/jobs", {}), "no_token"),
    "garbage": (lambda idp: ("/v1/jobs", bearer("not-a-token.at.all")), "malformed"),
    "basic scheme": (
        lambda idp: ("/v1/jobs", {"Authorization": "Basic dXNlcjpwYXNz"}),
        "not_a_bearer_token",
    ),
    "alg none": (lambda idp: ("/v1/jobs", bearer(_alg_none(idp))), "algorithm_not_allowed"),
    "HS256 with the RSA public key": (
        lambda idp: ("/v1/jobs", bearer(_hs256_with_public_key(idp))),
        "algorithm_not_allowed",
    ),
    "expired": (lambda idp: ("/v1/jobs", bearer(idp.token(lifetime_s=-120))), "expired"),
    "not yet valid": (
        lambda idp: ("/v1/jobs", bearer(idp.token(nbf=int(time.time()) + 600))),
        "not_yet_valid",
    ),
    "wrong iss": (
        lambda idp: ("/v1/jobs", bearer(idp.token(iss="https://evil.example/realms/x"))),
        "wrong_issuer",
    ),
    "wrong aud": (lambda idp: ("/v1/jobs", bearer(idp.token(aud="other-api"))), "wrong_audience"),
    "tampered payload": (lambda idp: ("/v1/jobs", bearer(_tampered(idp))), "bad_signature"),
    "unknown kid": (lambda idp: ("/v1/jobs", bearer(_unknown_kid(idp))), "unknown_kid"),
    "missing exp": (lambda idp: ("/v1/jobs", bearer(idp.token(exp=None))), "missing_claim"),
    "missing sub": (lambda idp: ("/v1/jobs", bearer(idp.token(sub=None))), "missing_claim"),
    "missing iat": (lambda idp: ("/v1/jobs", bearer(idp.token(iat=None))), "missing_claim"),
    "ID token": (lambda idp: ("/v1/jobs", bearer(idp.token(typ="ID"))), "not_an_access_token"),
    "refresh token": (
        lambda idp: ("/v1/jobs", bearer(idp.token(typ="Refresh"))),
        "not_an_access_token",
    ),
    "token in the query string": (
        lambda idp: (f"/v1/jobs?access_token={idp.token()}", {}),
        "token_in_query",
    ),
}


@pytest.mark.parametrize("case", BAD)
async def test_bad_tokens_get_401_and_one_log_line(
    case: str, auth_env: EnvFactory, idp: LocalIdP
) -> None:
    env = await auth_env()
    make, reason = BAD[case]
    url, headers = make(idp)
    with capture_logs() as logs:
        response = await env.client.get(url, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "invalid_api_key"
    failures = [entry for entry in logs if entry["event"] == "auth_failed"]
    assert len(failures) == 1, failures
    assert failures[0]["reason"] == reason
    assert failures[0]["client"] == "127.0.0.1"
    assert {"kid", "issuer", "path"} <= failures[0].keys()
    sent = headers.get("Authorization", "").rsplit(" ", 1)[-1] or url.partition("=")[2]
    if len(sent) > 8:
        assert sent not in repr(logs)


async def test_a_failure_names_the_kid_and_claimed_issuer(
    auth_env: EnvFactory, idp: LocalIdP
) -> None:
    env = await auth_env()
    kid = idp.published[0]
    with capture_logs() as logs:
        await env.client.get("/v1/jobs", headers=bearer(idp.token(kid, iss="https://evil/x")))
    (failure,) = [entry for entry in logs if entry["event"] == "auth_failed"]
    assert (failure["kid"], failure["issuer"]) == (kid, "https://evil/x")


async def test_rsa_and_ec_tokens_with_the_role_pass(auth_env: EnvFactory, idp: LocalIdP) -> None:
    env = await auth_env()
    for kid in idp.published[:2]:  # RS256, then ES256
        response = await env.client.get("/v1/jobs", headers=bearer(idp.token(kid)))
        assert response.status_code == 200, response.text
    realm_role = idp.token(client_roles=(), realm_roles=("transcriber",))
    assert (await env.client.get("/v1/jobs", headers=bearer(realm_role))).status_code == 200


async def test_a_sync_transcription_with_a_token(auth_env: EnvFactory, idp: LocalIdP) -> None:
    env = await auth_env()
    clip = ENGLISH[0]
    response = await env.client.post(
        "/v1/audio/transcriptions",
        files={"file": (clip.name, clip.path.read_bytes())},
        data={"model": "whisper-1"},
        headers=bearer(idp.token()),
    )
    assert response.status_code == 200, response.text
    assert response.json()["text"]


async def test_a_valid_token_without_the_role_gets_403(auth_env: EnvFactory, idp: LocalIdP) -> None:
    env = await auth_env()
    roleless = bearer(idp.token(client_roles=("bulk",)))
    with capture_logs() as logs:
        listed = await env.client.get("/v1/jobs", headers=roleless)
        posted = await env.client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.flac", ENGLISH[0].path.read_bytes())},
            data={"model": "whisper-1"},
            headers=roleless,
        )
    for response in (listed, posted):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "permission_denied"
    reasons = [entry["reason"] for entry in logs if entry["event"] == "auth_failed"]
    assert reasons == ["missing_role", "missing_role"]
    # A role of another client does not count: only the API's own client roles do.
    foreign = idp.claims(client_roles=())
    foreign["resource_access"]["other-app"] = {"roles": ["transcriber", "admin"]}
    response = await env.client.get("/v1/jobs", headers=bearer(idp.token(claims=foreign)))
    assert response.status_code == 403


async def test_a_caller_without_the_role_is_refused_before_the_upload_is_read(
    auth_env: EnvFactory, idp: LocalIdP
) -> None:
    """A transcription token on the bulk route, a bulk token on an upload route: 403 after
    at most the first chunk of a 64 MiB body (FastAPI alone would read the whole form)."""
    env = await auth_env()
    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(1024):
            sent.append(1)
            yield b"x" * 65536

    boundary = "----rayscribe"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    for path, roles in (
        ("/v1/audio/transcriptions", ("bulk",)),
        ("/v1/jobs", ("bulk",)),
        ("/v1/batches", ("transcriber",)),
    ):
        sent.clear()
        token = bearer(idp.token(client_roles=roles))
        response = await env.client.post(path, content=body(), headers={**headers, **token})
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["code"] == "permission_denied"
        assert len(sent) <= 1, f"{path}: {len(sent)} chunks of the body were read"
    # The route's role still lets its holder in (the body is then read and judged).
    response = await env.client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.flac", ENGLISH[0].path.read_bytes())},
        data={"model": "whisper-1"},
        headers=bearer(idp.token(client_roles=("transcriber",))),
    )
    assert response.status_code == 200, response.text


async def test_azp_is_checked_only_when_allowed_clients_is_set(
    auth_env: EnvFactory, idp: LocalIdP
) -> None:
    env = await auth_env(allowed_clients=["rayscribe-web"])
    refused = await env.client.get("/v1/jobs", headers=bearer(idp.token()))
    assert refused.status_code == 401
    allowed = await env.client.get("/v1/jobs", headers=bearer(idp.token(azp="rayscribe-web")))
    assert allowed.status_code == 200


async def test_probes_are_open_docs_and_models_need_a_token(
    auth_env: EnvFactory, idp: LocalIdP
) -> None:
    env = await auth_env()
    assert (await env.client.get("/healthz")).status_code == 200
    ready = await env.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["auth"] == "jwt"
    roleless = bearer(idp.token(client_roles=()))
    for path in ("/docs", "/openapi.json", "/v1/models"):
        assert (await env.client.get(path)).status_code == 401, path
        assert (await env.client.get(path, headers=roleless)).status_code == 200, path
    schemes = (await env.client.get("/openapi.json", headers=roleless)).json()["components"]
    assert schemes["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_docs_and_models_open_by_setting(auth_env: EnvFactory) -> None:
    env = await auth_env(open_docs=True)
    for path in ("/docs", "/openapi.json", "/v1/models"):
        assert (await env.client.get(path)).status_code == 200, path
    assert (await env.client.get("/v1/jobs")).status_code == 401


async def test_auth_off_lets_everyone_in_and_says_so(auth_env: EnvFactory) -> None:
    with capture_logs() as logs:
        env = await auth_env(mode="off")
    assert [entry for entry in logs if entry["event"] == "authentication_off"]
    assert (await env.client.get("/v1/jobs")).status_code == 200
    assert (await env.client.get("/readyz")).json()["auth"] == "off"


def test_jwt_decode_refuses_none_even_if_asked() -> None:
    """Sanity check of the library the verifier relies on (pinned algorithms)."""
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(_segments({"alg": "none"}, {"sub": "x"}) + ".", "key", algorithms=["RS256"])
