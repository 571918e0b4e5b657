"""Speaker labels on bulk rows (`--speakers`): who spoke each segment and each word.

The prepare stage, which holds the decoded audio anyway, diarizes the whole file
(`services.diarization`, loaded once per worker) and sends its turns (start, end, speaker:
a few bytes per turn) along with the speech items. The engine stage, once the transcript
is assembled, splits every segment where the speaker changes, by the rule of the sync
API's `diarized_json`: each word takes the speaker of the turn at its midpoint
(`speaker_runs`). A piece keeps its segment's decoding figures (avg_logprob, ...), its
text is its words', and the pieces of a segment together span it.

If diarization fails on a file, its row still has the transcript, without speakers, and
`error` says `diarization_failed: ...`: the costly half of the work is kept, and the row
is counted failed (as its key has a row, a rerun skips it; `--force` redoes it).

The row also keeps the turns themselves (`speaker_turns`): who spoke when, pauses and
all, for measures that words alone do not give (talk time per speaker, overlap with
another system's labels).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Protocol

from services.diarization.clustering import MAX_SPEAKERS as MAX_SPEAKERS
from services.diarization.encoder import DiarizationUnavailableError, weights_path
from services.diarization.pipeline import (
    MAX_DIARIZED_S,
    Turn,
    speaker_at,
    speaker_runs,
    turns_of_rows,
)
from services.transcription.domain import Waveform, Word

DIARIZER_THREADS = 1
"""torch threads per prepare worker: the pool scales by workers, and one thread labels a
30 s conversation in about 1.5 s here, well ahead of the engine."""
DIARIZATION_FAILED = "diarization_failed"
MAX_SPEECH_S = MAX_DIARIZED_S
"""Speech per file that gets speaker labels (the library's cap, see `MAX_DIARIZED_S`): a
prepare worker killed for memory would take its whole block of files with it. A longer
file keeps its transcript with `diarization_failed` saying so."""


class InWorkerDiarizer(Protocol):
    """Speaker turns computed inside a bulk prepare worker, synchronously; the online
    services' async seam is `services.transcription.service.SpeakerLabeller`."""

    def diarize(self, audio: Waveform, num_speakers: int | None = None) -> list[Turn]:
        """Speaker turns of 16 kHz mono audio (`services.diarization.pipeline.Diarizer`)."""


def diarization_missing() -> str | None:
    """Why speaker labels cannot run in this Python (the extra is missing), or None."""
    for module in ("torch", "sklearn"):
        if importlib.util.find_spec(module) is None:
            return (
                f"speaker labels need the optional extra (the module {module!r} is missing): "
                "pip install 'rayscribe[diarization]'"
            )
    try:
        weights_path()
    except DiarizationUnavailableError as exc:
        return str(exc)
    return None


def load_labeller() -> InWorkerDiarizer:
    from services.diarization.encoder import SpeakerEncoder
    from services.diarization.pipeline import Diarizer

    return Diarizer(SpeakerEncoder(threads=DIARIZER_THREADS))


def label_segments(
    segments: list[dict[str, Any]], turns: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The row's segments split at speaker changes, with `speaker` on segments and words,
    numbered again from 0."""
    timeline = turns_of_rows(turns)
    out: list[dict[str, Any]] = []
    for segment in segments:
        words = segment["words"] or []
        if not words:
            speaker = speaker_at(timeline, segment["start"], segment["end"]) or "A"
            out.append({**segment, "speaker": speaker})
            continue
        as_words = [Word(w["start"], w["end"], w["word"], w["probability"]) for w in words]
        runs = speaker_runs(as_words, timeline)
        taken = 0
        for index, (speaker, run) in enumerate(runs):
            mine = [{**w, "speaker": speaker} for w in words[taken : taken + len(run)]]
            taken += len(run)
            first, last = index == 0, index == len(runs) - 1
            out.append(
                {
                    **segment,
                    "start": segment["start"] if first else run[0].start,
                    "end": segment["end"] if last else run[-1].end,
                    "text": segment["text"] if len(runs) == 1 else "".join(w.word for w in run),
                    "speaker": speaker,
                    "words": mine,
                }
            )
    for index, segment in enumerate(out):
        segment["id"] = index
    return out
