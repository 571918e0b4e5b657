"""A small OpenID Connect provider on loopback for the auth tests, shaped like Keycloak.

It serves the realm's discovery document and JWKS over real HTTP (a thread of its own),
counts JWKS fetches, and mints access tokens with Keycloak's claims (`realm_access`,
`resource_access`, `azp`, `typ: Bearer`) signed with RSA or EC keys made by
`cryptography`. Keys can be published and withdrawn at run time (rotation).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

REALM = "rayscribe-test"
API_CLIENT = "rayscribe-api"
CLI_CLIENT = "rayscribe-cli"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class LocalIdP:
    def __init__(self) -> None:
        self.keys: dict[str, tuple[PrivateKey, str]] = {}
        self.published: list[str] = []
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.minted: list[str] = []
        self.delay_s = 0.0
        """How long the JWKS endpoint takes to answer (a slow provider)."""
        self.down = False
        """When set, the JWKS endpoint answers 503."""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.issuer = f"{self.base}/realms/{REALM}"
        self.jwks_url = f"{self.issuer}/protocol/openid-connect/certs"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- keys ---------------------------------------------------------------------------

    def add_key(self, kind: str = "RSA", *, publish: bool = True) -> str:
        kid = uuid.uuid4().hex
        key: PrivateKey
        if kind == "RSA":
            key, alg = rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
        else:
            key, alg = ec.generate_private_key(ec.SECP256R1()), "ES256"
        self.keys[kid] = (key, alg)
        if publish:
            self.publish(kid)
        return kid

    def publish(self, kid: str) -> None:
        with self._lock:
            self.published.append(kid)

    def withdraw(self, kid: str) -> None:
        with self._lock:
            self.published.remove(kid)

    def public_pem(self, kid: str) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return (
            self.keys[kid][0]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def jwks(self) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        with self._lock:
            kids = list(self.published)
        for kid in kids:
            key, alg = self.keys[kid]
            codec = RSAAlgorithm if alg.startswith("RS") else ECAlgorithm
            jwk = codec.to_jwk(key.public_key(), as_dict=True)  # type: ignore[attr-defined]
            entries.append({**jwk, "kid": kid, "use": "sig", "alg": alg})
        # Keycloak also publishes an encryption key; a verifier must skip it.
        enc = RSAAlgorithm.to_jwk(self._enc_key().public_key(), as_dict=True)
        entries.append({**enc, "kid": "enc-key", "use": "enc", "alg": "RSA-OAEP"})
        return {"keys": entries}

    _enc: rsa.RSAPrivateKey | None = None

    def _enc_key(self) -> rsa.RSAPrivateKey:
        if self._enc is None:
            self._enc = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._enc

    # -- tokens -------------------------------------------------------------------------

    def claims(
        self,
        *,
        sub: str = "alice",
        realm_roles: tuple[str, ...] = (),
        client_roles: tuple[str, ...] = ("transcriber",),
        lifetime_s: float = 300,
        **overrides: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "exp": now + int(lifetime_s),
            "iat": now,
            "auth_time": now,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "aud": [API_CLIENT, "account"],
            "sub": sub,
            "typ": "Bearer",
            "azp": CLI_CLIENT,
            "sid": str(uuid.uuid4()),
            "scope": "openid profile email",
            "realm_access": {
                "roles": ["offline_access", "uma_authorization", *realm_roles],
            },
            "resource_access": {
                API_CLIENT: {"roles": list(client_roles)},
                "account": {"roles": ["manage-account", "view-profile"]},
            },
            "email_verified": True,
            "preferred_username": sub,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        kid: str | None = None,
        *,
        headers: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        **claim_args: Any,
    ) -> str:
        kid = kid or self.published[0]
        key, alg = self.keys.get(kid) or self.keys[self.published[0]]
        payload = claims if claims is not None else self.claims(**claim_args)
        token = jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, **(headers or {})})
        self.minted.append(token)
        return token

    # -- HTTP ---------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == f"/realms/{REALM}/.well-known/openid-configuration":
                    with idp._lock:
                        idp.discovery_fetches += 1
                    body: dict[str, Any] = {
                        "issuer": idp.issuer,
                        "jwks_uri": idp.jwks_url,
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }
                elif self.path == f"/realms/{REALM}/protocol/openid-connect/certs":
                    with idp._lock:
                        idp.jwks_fetches += 1
                    time.sleep(idp.delay_s)
                    if idp.down:
                        self.send_error(503)
                        return
                    body = idp.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the tests count requests instead

        return Handler
