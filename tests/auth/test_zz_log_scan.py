"""Runs after the other auth tests (file order): everything they logged holds no token.

The whole run is also scanned, test by test, by tests/log_scan.py (hooked in
tests/conftest.py), which fails the session on any hit.
"""

from __future__ import annotations

from tests import log_scan


def test_the_scanner_finds_tokens() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    assert log_scan.find_secrets(f"path=/x?access_token={token} status=401")
    assert log_scan.find_secrets("headers={'authorization': 'Bearer abcdefghijklmnopqrstu'}")
    assert not log_scan.find_secrets("auth_failed reason=no_token kid=abc issuer=https://idp")
    assert log_scan.find_secrets("connecting to redis://:hunter2@10.0.0.5:6379/0")
    assert log_scan.find_secrets("url=postgresql+asyncpg://app:pw@db/rayscribe")
    assert not log_scan.find_secrets("url=postgresql+asyncpg://app:**********@db/rayscribe")
    assert not log_scan.find_secrets("url=postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    assert not log_scan.find_secrets("serving on http://127.0.0.1:8000/v1/jobs")


def test_nothing_logged_so_far_holds_a_token() -> None:
    """In a whole-directory run this comes after every other auth test (file order), so
    their output, with every refusal they logged, has been scanned by now."""
    assert log_scan.STATE.scanned_chars > 0
    assert log_scan.STATE.leaks == []
