"""What a job stores about a failure: a stable code and a message safe to show anyone.

A job's `error` is read by whoever can read the job, possibly long after the fact, so it
never carries what the logs carry: tracebacks, file paths, addresses, SQL. Expected
failures (`ServiceError`) keep their own code and message, which the services write for
clients; anything else is a bug or an outage and is stored as `internal_error` with a
generic message, the details going to the log line next to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.core.errors import OverloadedError, ServiceError, UnavailableError

INTERNAL_ERROR = "internal_error"
ATTEMPTS_EXHAUSTED = "attempts_exhausted"
MODEL_NOT_SERVED = "model_not_served"
AUDIO_DELETED = "audio_deleted"

INTERNAL_MESSAGE = "The job failed because of an internal error; the details were logged."
AUDIO_DELETED_MESSAGE = "The job's audio was deleted before it could run."
LOST_EVERY_ATTEMPT = "The tracker running the job stopped during each of its attempts."

# Belt and braces: a service message that looks like it leaks internals is not stored.
_UNSAFE = re.compile(
    r"Traceback|\.py\b|(?:^|[\s'\"(=])/[\w.-]+/|\b\d{1,3}(?:\.\d{1,3}){3}\b"
    r"|\b(?:SELECT|INSERT|UPDATE|DELETE)\b.+\b(?:FROM|INTO|SET|WHERE)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    permanent: bool
    """A client-side problem (bad audio, audio gone): retrying cannot help."""


def is_interruption(exc: BaseException) -> bool:
    """The model could not take the work right now (queue full, replica restarting).

    Not the job's fault: it waits and tries again without using up an attempt.
    """
    return isinstance(exc, OverloadedError | UnavailableError)


def is_safe(message: str) -> bool:
    return _UNSAFE.search(message) is None


def describe(exc: BaseException, *, audio_key: str | None = None) -> Failure:
    """The code and safe message to store for `exc`."""
    if isinstance(exc, FileNotFoundError) and audio_key and audio_key in str(exc.filename):
        return Failure(AUDIO_DELETED, AUDIO_DELETED_MESSAGE, permanent=True)
    if isinstance(exc, ServiceError):
        code = exc.code or INTERNAL_ERROR
        message = exc.message if is_safe(exc.message) else _generic(code)
        return Failure(code, message, permanent=400 <= exc.status_code < 500)
    return Failure(INTERNAL_ERROR, INTERNAL_MESSAGE, permanent=False)


def gave_up(last: Failure, attempts: int) -> Failure:
    """The final failure of a job that failed on each of its attempts."""
    return Failure(
        ATTEMPTS_EXHAUSTED,
        f"The job failed on each of its {attempts} attempts; the last failure "
        f"({last.code}): {last.message}",
        permanent=True,
    )


def _generic(code: str) -> str:
    return f"The job failed ({code}); the details were logged."


def model_not_served(model: str, grace_s: float) -> str:
    return f"No running tracker serves the job's model {model!r}; it waited {grace_s:g} s for one."
