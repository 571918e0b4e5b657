"""OpenAI's newer request fields as the multipart form carries them: `chunking_strategy`
and `include[]`, and our vocabulary hints (`hotwords`).

`chunking_strategy` comes in two spellings. The official `openai` client flattens the
object into bracketed fields (`chunking_strategy[type]=server_vad`,
`chunking_strategy[threshold]=0.6`, ...); curl users tend to send one field holding JSON
(`chunking_strategy={"type": "server_vad", ...}`) or the word `auto`. `fold_form` turns
either into one value before the request model validates it, and `parse_chunking` checks it
with messages that say what was expected.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.core.errors import InvalidRequestError
from services.transcription.domain import VadSettings

CHUNKING_FIELD = "chunking_strategy"
MAX_PREFIX_PADDING_MS = 2000
MAX_SILENCE_DURATION_MS = 10_000
MAX_HOTWORDS_CHARS = 1000


class ServerVad(BaseModel):
    """`{"type": "server_vad", ...}`: OpenAI's VAD knobs, mapped onto Silero's. An omitted
    knob keeps the engine's own value (so a bare `server_vad` is the same as `auto`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["server_vad"]
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Speech probability above which a frame is speech (Silero's `threshold`)."""
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=MAX_PREFIX_PADDING_MS)
    """Audio kept around each stretch of speech (Silero's `speech_pad_ms`)."""
    silence_duration_ms: int | None = Field(default=None, ge=0, le=MAX_SILENCE_DURATION_MS)
    """Silence that ends a stretch of speech (Silero's `min_silence_duration_ms`)."""

    def vad_settings(self) -> VadSettings:
        default = VadSettings()
        return VadSettings(
            threshold=default.threshold if self.threshold is None else self.threshold,
            speech_pad_ms=(
                default.speech_pad_ms if self.prefix_padding_ms is None else self.prefix_padding_ms
            ),
            min_silence_duration_ms=(
                default.min_silence_duration_ms
                if self.silence_duration_ms is None
                else self.silence_duration_ms
            ),
        )


ChunkingStrategy = Literal["auto"] | ServerVad


def fold_form(data: Any) -> Any:
    """The form's `chunking_strategy[...]` fields, or a JSON string in `chunking_strategy`,
    as one value (a dict or `"auto"`); anything else passes through unchanged."""
    if not isinstance(data, dict):
        return data
    bracketed = {
        key[len(CHUNKING_FIELD) + 1 : -1]: value
        for key, value in data.items()
        if isinstance(key, str) and key.startswith(CHUNKING_FIELD + "[") and key.endswith("]")
    }
    if not bracketed and not isinstance(data.get(CHUNKING_FIELD), str):
        return data
    folded = {k: v for k, v in data.items() if not str(k).startswith(CHUNKING_FIELD + "[")}
    if bracketed:
        if CHUNKING_FIELD in data:
            raise InvalidRequestError(
                "Send chunking_strategy either as one field or as chunking_strategy[...] "
                "fields, not both.",
                param=CHUNKING_FIELD,
            )
        folded[CHUNKING_FIELD] = bracketed
        return folded
    raw = str(data[CHUNKING_FIELD]).strip()
    if raw.startswith("{"):
        try:
            folded[CHUNKING_FIELD] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f'chunking_strategy is not valid JSON ({exc.msg}); expected "auto" or '
                '{"type": "server_vad", ...}.',
                param=CHUNKING_FIELD,
            ) from exc
    else:
        folded[CHUNKING_FIELD] = raw or None
    return folded


def parse_chunking(value: Any) -> ChunkingStrategy | None:
    """`auto`, a `ServerVad`, or None (not given); 400 with a clear message otherwise."""
    if value is None or value == "" or isinstance(value, ServerVad):
        return value or None
    if value == "auto":
        return "auto"
    if isinstance(value, dict):
        try:
            return ServerVad.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "type"
            raise InvalidRequestError(
                f"chunking_strategy.{where}: {first['msg']} (got {first.get('input')!r}). "
                'Expected "auto" or {"type": "server_vad", "threshold": 0..1, '
                f'"prefix_padding_ms": 0..{MAX_PREFIX_PADDING_MS}, '
                f'"silence_duration_ms": 0..{MAX_SILENCE_DURATION_MS}}}.',
                param=CHUNKING_FIELD,
            ) from exc
    raise InvalidRequestError(
        f'chunking_strategy must be "auto" or a server_vad object, got {value!r}.',
        param=CHUNKING_FIELD,
    )


def vad_of(strategy: ChunkingStrategy | None) -> VadSettings:
    return strategy.vad_settings() if isinstance(strategy, ServerVad) else VadSettings()
