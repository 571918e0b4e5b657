"""The speaker fields of a transcription request (`response_format=diarized_json`).

OpenAI's `known_speaker_names[]` and `known_speaker_references[]` (audio clips as data URLs,
paired by position) and our `num_speakers`. The multipart parser lets a text field hold up
to `MAX_REFERENCE_FIELD_BYTES` on the transcription route so that references fit; every
other text field is held to `MAX_TEXT_FIELD_CHARS` here, as the parser's own default would.
How long each reference lasts is known only once it is decoded (`speaker_references.py`).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from services.core.errors import InvalidRequestError

MAX_SPEAKERS = 8
MAX_REFERENCES = 8
MAX_REFERENCE_BYTES = 2 * 1024 * 1024
"""Decoded audio of one reference: 10 s of 16-bit 44.1 kHz stereo WAV is 1.76 MB."""
MAX_REFERENCE_FIELD_BYTES = 3 * 1024 * 1024
"""One multipart text field on the transcription route: a reference as base64 (4/3 of
`MAX_REFERENCE_BYTES`) plus its `data:` prefix."""
MAX_TEXT_FIELD_CHARS = 64 * 1024
"""Any other text field: far above what a valid value needs (prompt: 2,000 characters)."""
NAMES_FIELD = "known_speaker_names"
REFERENCES_FIELD = "known_speaker_references"
MAX_NAME_CHARS = 64
KNOWN_SPEAKER_FIELDS = frozenset({NAMES_FIELD, REFERENCES_FIELD})
"""The request fields a job keeps apart from its row (`job_speaker_references`)."""

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.A)


def check_field_sizes(data: Any) -> None:
    """Refuses an oversize text field other than a speaker reference (400, naming it)."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if str(key).startswith(REFERENCES_FIELD):
            continue
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if isinstance(item, str) and len(item) > MAX_TEXT_FIELD_CHARS:
                raise InvalidRequestError(
                    f"The field {key} has {len(item)} characters; at most "
                    f"{MAX_TEXT_FIELD_CHARS} are allowed.",
                    param=str(key).removesuffix("[]"),
                )


def reference_audio(url: str, index: int) -> bytes:
    """The audio bytes of one `data:audio/...;base64,...` reference."""
    param = f"{REFERENCES_FIELD}[{index}]"
    match = _DATA_URL.match(url)
    if match is None or not match["mime"].startswith("audio/"):
        raise InvalidRequestError(
            f"{param} must be a data URL of audio, such as 'data:audio/wav;base64,...'; "
            f"got {url[:40]!r}.",
            param=REFERENCES_FIELD,
        )
    payload = url[match.end() :]
    if len(payload) * 3 // 4 > MAX_REFERENCE_BYTES:
        raise InvalidRequestError(
            f"{param} holds about {len(payload) * 3 // 4} bytes of audio; at most "
            f"{MAX_REFERENCE_BYTES} are allowed (2 to 10 s of speech).",
            param=REFERENCES_FIELD,
        )
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(
            f"{param} is not valid base64 after 'base64,'.", param=REFERENCES_FIELD
        ) from exc
    if not audio:
        raise InvalidRequestError(f"{param} holds no audio.", param=REFERENCES_FIELD)
    return audio


def check_speakers(names: list[str], references: list[str]) -> list[str]:
    """Names paired with references, at most `MAX_REFERENCES`, each reference decodable;
    returns the names stripped."""
    if len(names) != len(references):
        raise InvalidRequestError(
            f"{NAMES_FIELD}[] and {REFERENCES_FIELD}[] must pair up one to one; got "
            f"{len(names)} names and {len(references)} references.",
            param=REFERENCES_FIELD if len(names) > len(references) else NAMES_FIELD,
        )
    if len(references) > MAX_REFERENCES:
        raise InvalidRequestError(
            f"At most {MAX_REFERENCES} known speakers are allowed; got {len(references)}.",
            param=REFERENCES_FIELD,
        )
    stripped = [name.strip() for name in names]
    for name in stripped:
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidRequestError(
                f"Each of {NAMES_FIELD}[] must have 1 to {MAX_NAME_CHARS} characters; "
                f"got {name[:80]!r}.",
                param=NAMES_FIELD,
            )
    if len(set(stripped)) != len(stripped):
        raise InvalidRequestError(f"{NAMES_FIELD}[] has a repeated name.", param=NAMES_FIELD)
    for index, url in enumerate(references):
        reference_audio(url, index)
    return stripped
