"""Known speakers' reference clips, decoded and checked: one place for sync requests and jobs.

`request_speakers.py` checks the fields as text (pairing, names, data URLs, base64, size);
how long a clip lasts is known only once it is decoded, by the same bounded decoder as any
upload. Both the sync service and job submission call `decode_references`, so a bad clip is
the same 400 (param `known_speaker_references`, with its index) on either route. Jobs keep
the decoded clips as 16 kHz 16-bit PCM until their speakers are found (`to_pcm`/`of_pcm`).
"""

from __future__ import annotations

import asyncio
import io

import numpy as np

from services.core.errors import InvalidRequestError, ServiceError
from services.diarization.pipeline import MAX_REFERENCE_S, MIN_REFERENCE_S
from services.transcription.audio import AudioTooLongError, decode_audio
from services.transcription.domain import SAMPLE_RATE, Waveform
from services.transcription.request import TranscriptionRequest
from services.transcription.request_speakers import REFERENCES_FIELD

SLACK_S = 0.5
"""Decoders differ by a few frames: a clip within half a second of the bounds is taken."""


async def decode_reference(clip: bytes, index: int) -> Waveform:
    """One reference's audio at 16 kHz, refused (400) unless it decodes and lasts 2-10 s."""
    param = REFERENCES_FIELD
    try:
        audio = await asyncio.to_thread(
            decode_audio, io.BytesIO(clip), max_duration_s=MAX_REFERENCE_S + SLACK_S
        )
    except AudioTooLongError as exc:
        raise InvalidRequestError(
            f"{param}[{index}] is longer than {MAX_REFERENCE_S:g} s; send 2 to 10 s of "
            "the speaker's voice.",
            param=param,
        ) from exc
    except ServiceError as exc:
        raise InvalidRequestError(
            f"{param}[{index}] could not be decoded as audio: {exc.message}", param=param
        ) from exc
    seconds = len(audio) / SAMPLE_RATE
    if not MIN_REFERENCE_S - SLACK_S <= seconds <= MAX_REFERENCE_S + SLACK_S:
        raise InvalidRequestError(
            f"{param}[{index}] lasts {seconds:.1f} s; send {MIN_REFERENCE_S:g} to "
            f"{MAX_REFERENCE_S:g} s of the speaker's voice.",
            param=param,
        )
    return audio


async def decode_references(request: TranscriptionRequest) -> list[tuple[str, Waveform]]:
    """Each known speaker's name and decoded reference, in the order given."""
    return [
        (name, await decode_reference(clip, index))
        for index, (name, clip) in enumerate(request.speaker_references())
    ]


def to_pcm(audio: Waveform) -> bytes:
    """16-bit little-endian PCM of a 16 kHz waveform (at most 10.5 s: 336 kB)."""
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def of_pcm(pcm: bytes) -> Waveform:
    return (np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767).astype(np.float32)
