"""Every failure leaves the HTTP edge as OpenAI's error body:
`{"error": {"message", "type", "param", "code"}}`.

Service errors carry their own status; FastAPI's validation errors become 400
`invalid_request_error` (not its default 422 `{"detail": ...}`); anything unexpected is a
logged 500 that reveals nothing internal. `ErrorResponse` is that body as a type, declared
on the routes through `error_responses`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from services.core.errors import ServiceError
from services.core.logging import get_logger
from services.core.metrics import telemetry

log = get_logger(__name__)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, as OpenAI sends it."""

    error: ErrorDetail


STATUS_MEANINGS: dict[int | str, str] = {
    400: "A field or header is missing or wrong; `param` names it.",
    403: "The token lacks the role, or a path lies outside the allowed roots.",
    404: "No such job, batch or model.",
    408: "The request body arrived too slowly and was cut off.",
    409: "The job is not in a state that allows this, or the Idempotency-Key was reused.",
    410: "The job's result or audio was deleted.",
    413: "The body is larger than this endpoint accepts, or the audio is too long.",
    415: "The file is not audio this server can decode.",
    429: "Too many open event streams; retry after `Retry-After` seconds.",
    503: "Overloaded or a dependency is down; retry after `Retry-After` seconds.",
    507: "The server's disk is too full to take the upload.",
    "4XX": "Any other client error (405, 429...), with the same body.",
    "5XX": "A server error, with the same body; nothing internal is revealed.",
}


def error_responses(*statuses: int, by_reference: bool = False) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: these statuses, then any other 4XX and 5XX. Declaring
    `4XX` also keeps FastAPI's 422 (which this API never sends) out of the schema.

    FastAPI files a `model` under the route's own media type; a route whose successes are
    not JSON (an event stream) refers to the schema instead (`by_reference`), which another
    route's `model` has put into the components."""
    keys: list[int | str] = [*statuses, "4XX", "5XX"]
    if by_reference:
        json = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        return {key: {"description": STATUS_MEANINGS[key], "content": json} for key in keys}
    return {key: {"model": ErrorResponse, "description": STATUS_MEANINGS[key]} for key in keys}


class ServiceHTTPException(HTTPException):
    """Carries a ServiceError through FastAPI's body parsing, which re-raises only these."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.status_code, error.message, error.headers)
        self.error = error


def error_body(
    message: str, *, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    detail = ErrorDetail(message=message, type=error_type, param=param, code=code)
    return ErrorResponse(error=detail).model_dump()


def error_response(error: ServiceError) -> JSONResponse:
    telemetry.error_answered(error.code)  # decoder refusals and limit rejections
    body = error_body(
        error.message, error_type=error.error_type, param=error.param, code=error.code
    )
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status_code >= 500:
        log.warning("service_unavailable", error=exc.message, code=exc.code)
    return error_response(exc)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ServiceHTTPException):
        return error_response(exc.error)
    error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    body = error_body(str(exc.detail), error_type=error_type, code=_HTTP_CODES.get(exc.status_code))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = [
        str(part)
        for part in first.get("loc", ())
        if part not in ("body", "query") and not isinstance(part, int)  # list indices
    ]
    param = ".".join(location) or None
    detail = first.get("msg", "invalid request")
    message = f"Invalid value for {param!r}: {detail}." if param else f"Invalid request: {detail}."
    body = error_body(
        message, error_type="invalid_request_error", param=param, code="invalid_value"
    )
    return JSONResponse(body, status_code=400)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    body = error_body(
        "The server had an error while processing your request.", error_type="server_error"
    )
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
