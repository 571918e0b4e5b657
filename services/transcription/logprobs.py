"""Per-token log-probabilities (`include[]=logprobs`): scoring, and OpenAI's token spelling.

The engine decodes as usual; afterwards the items that asked get the model's probability of
each final text token on the item's own audio (`WindowDecoder.token_logprobs`, a forced
alignment). A shared window's segments may have been cut between callers and re-tokenized,
so scoring the final tokens item by item keeps each caller's numbers its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from services.core.logging import get_logger
from services.transcription.domain import DecodeOptions, Segment, TokenLogprob, Waveform
from services.transcription.packing import ItemResult, WorkItem, group_by_decode

log = get_logger(__name__)


class Scorer(Protocol):
    @property
    def eot(self) -> int: ...

    def token_logprobs(
        self, audios: Sequence[Waveform], tokens: Sequence[list[int]], decode: DecodeOptions
    ) -> list[list[TokenLogprob]]: ...


def add_logprobs(
    scorer: Scorer, items: Sequence[WorkItem], results: list[ItemResult], *, batch_size: int
) -> None:
    """Fill `logprobs` on the segments of the items that asked for them, in place. Costs one
    encoder pass per such item; a failure here fails only those items."""
    wanted = [
        k for k, item in enumerate(items) if item.logprobs and not isinstance(results[k], Exception)
    ]
    for decode, indices in group_by_decode([items[k] for k in wanted]).items():
        chosen = [wanted[i] for i in indices]
        for start in range(0, len(chosen), batch_size):
            part = chosen[start : start + batch_size]
            segments = [_result_segments(results[k]) for k in part]
            try:
                scored = scorer.token_logprobs(
                    [items[k].speech for k in part],
                    [[t for s in segs for t in s.tokens] for segs in segments],
                    decode,
                )
            except Exception as exc:
                log.warning("logprobs_failed", error=repr(exc), exc_info=exc)
                for k in part:
                    results[k] = exc
                continue
            for segs, logprobs in zip(segments, scored, strict=True):
                _spread_logprobs(segs, logprobs, scorer.eot)


def _result_segments(result: ItemResult) -> list[Segment]:
    assert not isinstance(result, Exception)
    return result


def _spread_logprobs(segments: list[Segment], logprobs: list[TokenLogprob], eot: int) -> None:
    """Hand each segment the log-probabilities of its own text tokens, in order."""
    position = 0
    for segment in segments:
        count = sum(1 for t in segment.tokens if t < eot)
        segment.logprobs = logprobs[position : position + count]
        position += count


def _byte_alphabet() -> dict[str, int]:
    """Whisper's BPE spells each byte as one printable character (GPT-2's byte-level
    scheme): printable Latin-1 bytes stand for themselves, every other byte for the
    character 256 + its rank among those. This maps the characters back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    alphabet = {chr(b): b for b in printable}
    extra = 0
    for byte in range(256):
        if byte not in printable:
            alphabet[chr(256 + extra)] = byte
            extra += 1
    return alphabet


_BYTES = _byte_alphabet()


def token_logprob(piece: str | None, probability: float) -> TokenLogprob:
    raw = bytes(_BYTES.get(char, 0x3F) for char in piece or "")
    return TokenLogprob(
        token=raw.decode("utf-8", errors="replace"),
        logprob=math.log(max(float(probability), 1e-12)),
        bytes=list(raw),
    )
