"""Runs after the other auth tests (file order): everything they logged holds no token.

The whole run is also scanned, test by test, by tests/log_scan.py (hooked in
tests/conftest.py), which fails the session on any hit.
"""

from __future__ import annotations

from tests import log_scan
from tests.idp import LocalIdP


def test_the_scanner_finds_tokens() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    assert log_scan.find_secrets(f"path=/x?access_token={token} status=401")
    assert log_scan.find_secrets("headers={'authorization': 'Bearer abcdefghijklmnopqrstu'}")
    assert not log_scan.find_secrets("auth_failed reason=no_token kid=abc issuer=https://idp")


def test_no_token_minted_in_this_run_was_logged(idp: LocalIdP) -> None:
    assert len(idp.minted) > 20  # the auth tests ran before this one
    assert log_scan.STATE.auth_failures_seen > 20  # and their log lines were scanned
    assert log_scan.STATE.leaks == []
