"""`stream=true` on the wire: OpenAI's transcript events as Server-Sent Events.

Framed by FastAPI's own SSE encoder (`fastapi.sse.format_sse_event`, the library the job
event stream uses): the route answers JSON or a stream depending on a form field, so it
returns the `StreamingResponse` itself rather than being a generator route. Each event has
`event:` set to its `type` (for `EventSource` users) and the JSON body in `data:`, as
OpenAI sends them: `transcript.text.delta` (`delta`, `logprobs` when asked), then
`transcript.text.done` (`text`, `usage`, `logprobs`). A failure after the stream started
is an `error` event carrying OpenAI's error body (the `openai` client raises `APIError` on
it), never a cut stream. A client that disconnects cancels the generator, and with it the
replica's work for the request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event

from deployments.errors import error_body
from services.core.errors import ServiceError
from services.core.logging import get_logger
from services.transcription.formats import logprobs_json, usage
from services.transcription.streaming import TextDelta, TranscriptEvent

log = get_logger(__name__)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _event(body: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(body), event=str(body["type"]))


def _body(event: TranscriptEvent) -> dict[str, Any]:
    if isinstance(event, TextDelta):
        body: dict[str, Any] = {"type": "transcript.text.delta", "delta": event.text}
    else:
        body = {
            "type": "transcript.text.done",
            "text": event.transcript.text,
            "usage": usage(event.transcript).model_dump(mode="json"),
        }
    if event.logprobs is not None:
        body["logprobs"] = [lp.model_dump(mode="json") for lp in logprobs_json(event.logprobs)]
    return body


async def _frames(events: AsyncIterator[TranscriptEvent]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield _event(_body(event))
    except ServiceError as exc:
        log.info("stream_failed", error=exc.message, code=exc.code)
        detail = error_body(exc.message, error_type=exc.error_type, param=exc.param, code=exc.code)
        yield _event({"type": "error", **detail})
    except Exception as exc:
        log.error("stream_failed", exc_info=exc)
        detail = error_body(
            "The server had an error while transcribing; the transcript is incomplete.",
            error_type="server_error",
        )
        yield _event({"type": "error", **detail})
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def sse_response(events: AsyncIterator[TranscriptEvent]) -> StreamingResponse:
    return StreamingResponse(
        _frames(events), media_type="text/event-stream", headers=STREAM_HEADERS
    )
