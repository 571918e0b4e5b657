"""The engine stage of a bulk run: prepared files in, output rows out.

The online engine (`WhisperEngine`) does the work, exactly as for the Serve deployment:
the work items of every file in the call go through one `run`, which packs speech of
different files into shared 30 s windows and hands each file back only its own words;
`assemble` joins each file's results into its transcript. One file failing in the model
fails only its own row. With `--speakers`, each row's segments are then split by the
turns the prepare stage found (`services.bulk.speakers`).
"""

from __future__ import annotations

from typing import Any

from services.bulk.prepare import unpack_items
from services.bulk.rows import (
    error_text,
    failed_row,
    speaker_options,
    transcript_row,
    transcription_options,
)
from services.bulk.speakers import label_segments
from services.core.logging import get_logger
from services.transcription.assembly import PreparedAudio, assemble
from services.transcription.engine import WhisperEngine
from services.transcription.formats import to_srt, to_vtt
from services.transcription.packing import WINDOW_SAMPLES, ItemResult, WorkItem

log = get_logger(__name__)

SUBTITLE_RENDERERS = {"srt": to_srt, "vtt": to_vtt}
GROUP_WINDOWS = 32
"""Speech handed to one engine call, in 30 s windows: enough to fill its decode batches."""


class BulkEngine:
    def __init__(self, engine: WhisperEngine, *, model: str, subtitles: str | None) -> None:
        self._engine = engine
        self._model = model
        self._render = SUBTITLE_RENDERERS[subtitles] if subtitles else None

    def _prepared(self, row: dict[str, Any]) -> PreparedAudio:
        """The engine's step 1 for a prepared row: its items, with task and language settled."""
        options = transcription_options(row["options"])
        items = [packed.work_item(options) for packed in unpack_items(row["items"])]
        return self._engine.settle(items, options, duration_s=float(row["duration_s"]))

    def transcribe(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One output row per prepared row, in the same order.

        Files go to the engine in groups of about `GROUP_WINDOWS` windows of speech (a
        longer file alone), so only one group's audio is float32 at a time."""
        out: list[dict[str, Any] | None] = [None] * len(rows)
        group: list[int] = []
        group_samples = 0
        for index, row in enumerate(rows):
            if row["error"] is not None or row["items"] is None:
                out[index] = self._failed(row, row["error"] or "internal_error: no speech data")
                continue
            samples = int(row.get("speech_samples") or 0)
            if group and group_samples + samples > GROUP_WINDOWS * WINDOW_SAMPLES:
                self._run([rows[i] for i in group], group, out)
                group, group_samples = [], 0
            group.append(index)
            group_samples += samples
        if group:
            self._run([rows[i] for i in group], group, out)
        return [row for row in out if row is not None]

    def _run(
        self, rows: list[dict[str, Any]], slots: list[int], out: list[dict[str, Any] | None]
    ) -> None:
        prepared: dict[int, PreparedAudio] = {}
        for slot, row in zip(slots, rows, strict=True):
            try:
                prepared[slot] = self._prepared(row)
            except Exception as exc:
                log.exception("bulk_prepare_failed", path=row["path"])
                out[slot] = self._failed(row, error_text("internal_error", repr(exc)))
        items: list[WorkItem] = [item for p in prepared.values() for item in p.items]
        results: list[ItemResult] = self._engine.run(items) if items else []
        start = 0
        by_slot = dict(zip(slots, rows, strict=True))
        for slot, audio in prepared.items():
            row = by_slot[slot]
            mine = results[start : start + len(audio.items)]
            start += len(audio.items)
            try:
                transcript = assemble(audio, mine)
            except Exception as exc:
                log.warning("bulk_transcription_failed", path=row["path"], error=repr(exc))
                out[slot] = self._failed(row, error_text("internal_error", repr(exc)))
                continue
            done = transcript_row(
                path=row["path"],
                id=row["id"],
                sha256=row["sha256"],
                model=self._model,
                options=row["options"],
                transcript=transcript,
            )
            done["subtitles"] = self._render(transcript) if self._render else None
            out[slot] = self._labelled(done, row)

    @staticmethod
    def _labelled(done: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        if not speaker_options(row["options"])[0]:
            return done
        if row.get("diarization_error"):  # the transcript stays; the row says what is missing
            done["error"] = row["diarization_error"]
            return done
        done["speaker_turns"] = row.get("turns") or []
        done["segments"] = label_segments(done["segments"], done["speaker_turns"])
        return done

    def _failed(self, row: dict[str, Any], error: str) -> dict[str, Any]:
        failed = failed_row(
            path=row["path"],
            id=row["id"],
            model=self._model,
            options=row["options"],
            error=error,
            sha256=row["sha256"],
            duration_s=row["duration_s"],
        )
        failed["subtitles"] = None
        return failed
