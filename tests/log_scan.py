"""A scan of everything the test run logged for bearer tokens, JWTs and passwords in URLs.

pytest captures each test's stdout, stderr and log records (in-process structlog lines,
and the Ray workers' lines forwarded to the driver); `scan_report` looks through them as
each test finishes. Any hit fails the session at its end (`finish`), with the test named
and the token cut short, so a leak is found whichever test caused it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}")
PASSWORD_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@]*:(?!\*+@)[^\s/@]+@")
"""A connection URL with its password in clear (`redis://:pw@host`); masked ones pass."""


def find_secrets(text: str) -> list[str]:
    """Bearer credentials, JWTs and passwords in URLs, each cut to a harmless prefix."""
    found = (*JWT.finditer(text), *BEARER.finditer(text), *PASSWORD_URL.finditer(text))
    return [match.group(0)[:12] + "..." for match in found]


@dataclass
class ScanState:
    scanned_chars: int = 0
    auth_failures_seen: int = 0
    leaks: list[tuple[str, str]] = field(default_factory=list)


STATE = ScanState()


def scan_report(report: pytest.TestReport) -> None:
    # A report carries the sections of the phases before it too; read each phase once.
    text = "\n".join(content for title, content in report.sections if title.endswith(report.when))
    STATE.scanned_chars += len(text)
    STATE.auth_failures_seen += text.count("auth_failed")
    STATE.leaks += [(report.nodeid, hit) for hit in find_secrets(text)]


def finish(session: pytest.Session) -> None:
    if not STATE.leaks:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.section("secrets in logs", red=True)
        for nodeid, hit in STATE.leaks:
            reporter.write_line(f"{nodeid}: {hit}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
