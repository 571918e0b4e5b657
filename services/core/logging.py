"""Structured JSON logging, configured once per process.

Every Ray replica and actor is its own process, so each calls `configure_logging` in its
constructor; a second call is a no-op. Context such as `request_id` is bound with
`structlog.contextvars` and lands on every line logged while it is bound.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LOGGER_NAMESPACE = "rayscribe"
_configured = False


def configure_logging(level: str = "INFO") -> None:
    """Send `rayscribe.*` loggers to stderr as one JSON object per line."""
    global _configured
    if _configured:
        return
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger(LOGGER_NAMESPACE)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    _configured = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger under the project namespace, e.g. `get_logger(__name__)`."""
    qualified = name if name.startswith(LOGGER_NAMESPACE) else f"{LOGGER_NAMESPACE}.{name}"
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(qualified)
    return logger
