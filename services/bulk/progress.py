"""Where a bulk run reports how far it got.

The Ray job (`python -m cluster.bulk`) calls a `ProgressSink` from its driver; with
`--batch-id` the sink writes the counts to the batch's row in the database, which is what
`GET /v1/batches/{id}` shows. Without it the counts only go to the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class BulkCounts:
    """Cumulative counts of one run; `total` may grow while inputs are still being listed."""

    total: int
    done: int = 0
    failed: int = 0
    audio_seconds: float = 0.0


class ProgressSink(Protocol):
    def started(self, counts: BulkCounts) -> None:
        """Inputs are listed (skipped ones already counted as done)."""

    def advanced(self, counts: BulkCounts) -> None:
        """More rows were written; called often, so implementations may throttle."""

    def finished(self, counts: BulkCounts, error: str | None) -> None:
        """The run ended: `error` is None when every input has a row."""


class NullProgress:
    """Reports nothing (a run started by hand, without a batch row)."""

    def started(self, counts: BulkCounts) -> None:
        return None

    def advanced(self, counts: BulkCounts) -> None:
        return None

    def finished(self, counts: BulkCounts, error: str | None) -> None:
        return None
