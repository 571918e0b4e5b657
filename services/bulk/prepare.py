"""The CPU stage of a bulk run: read one file, hash it, decode it (bounded), find its speech.

Everything up to the model happens here, in one stage, so the decoded float32 audio (about
230 MB per audio-hour) never travels between stages: what leaves is the speech only, cut
into the engine's window-sized work items by the online path's own `find_items` (the
model-free half of `WhisperEngine.prepare`), as 16-bit samples (half the bytes again; far
below what the model resolves). The engine stage turns them back into `WorkItem`s.

A file that cannot be read or decoded leaves as a row with its error and no items.

With `--speakers` the stage also diarizes the whole decoded file here (`speakers`): its
turns leave with the items, or `diarization_error` if that failed (the file is still
transcribed).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.bulk.objects import FileTooLargeError, read_bytes, resolve
from services.bulk.rows import error_text, speaker_options, transcription_options
from services.bulk.speakers import (
    DIARIZATION_FAILED,
    MAX_SPEECH_S,
    InWorkerDiarizer,
)
from services.core.errors import ServiceError
from services.core.logging import get_logger
from services.core.settings import BulkSettings, StorageSettings
from services.diarization.pipeline import turns_to_rows
from services.transcription.audio import decode_audio
from services.transcription.domain import SAMPLE_RATE, TranscriptionOptions, Waveform
from services.transcription.engine import find_items
from services.transcription.packing import Piece, WorkItem

log = get_logger(__name__)

_INT16_SCALE = 32768.0
"""The decoder's own scale for 16-bit sources, so their samples survive the trip exactly."""


@dataclass(frozen=True)
class PackedItem:
    """A work item on its way to the engine stage: speech as int16, where it came from."""

    speech: npt.NDArray[np.int16]
    pieces: tuple[tuple[int, int, int], ...]
    """(item_offset, source_start, length) of each piece, in samples."""

    @classmethod
    def of(cls, item: WorkItem) -> PackedItem:
        scaled = np.clip(np.round(item.speech * _INT16_SCALE), -32768, 32767)
        return cls(
            speech=scaled.astype(np.int16),
            pieces=tuple((p.item_offset, p.source_start, p.length) for p in item.pieces),
        )

    def work_item(self, options: TranscriptionOptions) -> WorkItem:
        speech: Waveform = self.speech.astype(np.float32) / np.float32(_INT16_SCALE)
        return WorkItem(
            speech=speech,
            pieces=[Piece(*piece) for piece in self.pieces],
            decode=options.decode,
            word_timestamps=options.word_timestamps,
            logprobs=options.logprobs,
            background=True,
        )


def pack_items(items: list[PackedItem]) -> bytes:
    return pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_items(data: bytes) -> list[PackedItem]:
    items: list[PackedItem] = pickle.loads(data)  # written by `pack_items` in this run
    return items


class Preparer:
    """Turns input rows (path, id, options, language, prompt) into prepared rows."""

    def __init__(
        self,
        bulk: BulkSettings,
        storage: StorageSettings,
        labeller: InWorkerDiarizer | None = None,
    ) -> None:
        """`labeller` diarizes the files whose options ask for speakers."""
        self._bulk = bulk
        self._storage = storage
        self._labeller = labeller

    def prepare(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": row["path"],
            "id": row["id"],
            "options": row["options"],
            "language": row.get("language"),
            "prompt": row.get("prompt"),
            "sha256": None,
            "duration_s": None,
            "error": None,
            "items": None,
            "speech_samples": None,
            "turns": None,
            "diarization_error": None,
        }
        try:
            data = read_bytes(
                resolve(row["path"], self._storage), max_bytes=self._bulk.max_file_bytes
            )
        except FileNotFoundError:
            out["error"] = error_text("file_not_found", "the input file does not exist")
            return out
        except IsADirectoryError:
            out["error"] = error_text("file_not_found", "the input is not a file")
            return out
        except FileTooLargeError as exc:
            out["error"] = error_text("file_too_large", str(exc))
            return out
        except OSError as exc:
            log.warning("bulk_read_failed", path=row["path"], error=repr(exc))
            out["error"] = error_text("read_failed", f"the input could not be read ({exc})")
            return out
        out["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            audio = decode_audio(data, max_duration_s=self._bulk.max_duration_s)
        except ServiceError as exc:
            out["error"] = error_text(exc.code or "invalid_audio", exc.message)
            return out
        del data
        out["duration_s"] = round(audio.shape[0] / SAMPLE_RATE, 3)
        try:
            items = [
                PackedItem.of(item)
                for item in find_items(audio, transcription_options(row["options"]))
            ]
            out["items"] = pack_items(items)
            out["speech_samples"] = sum(int(item.speech.shape[0]) for item in items)
        except Exception as exc:  # VAD on decoded audio failing is a bug, not the file's
            log.exception("bulk_vad_failed", path=row["path"])
            out["error"] = error_text("internal_error", f"speech detection failed ({exc!r})")
            return out
        speakers, num_speakers = speaker_options(row["options"])
        if speakers:
            self._diarize(out, audio, num_speakers)
        return out

    def _diarize(self, out: dict[str, Any], audio: Waveform, num_speakers: int | None) -> None:
        if self._labeller is None:
            out["diarization_error"] = error_text(
                DIARIZATION_FAILED, "this worker has no speaker labeller loaded"
            )
            return
        speech_s = int(out["speech_samples"] or 0) / SAMPLE_RATE
        if speech_s > MAX_SPEECH_S:
            out["diarization_error"] = error_text(
                DIARIZATION_FAILED,
                f"the file has {speech_s:.0f} s of speech; speaker labels cover at most "
                f"{MAX_SPEECH_S:.0f} s per file",
            )
            return
        try:
            out["turns"] = turns_to_rows(self._labeller.diarize(audio, num_speakers=num_speakers))
        except Exception as exc:  # one file's labels failing must not stop the run
            log.exception("bulk_diarization_failed", path=out["path"])
            out["diarization_error"] = error_text(DIARIZATION_FAILED, repr(exc)[:500])
