"""Counts every HTTP answer of the ingress by route template, model and status code.

The route is the template FastAPI matched (`/v1/jobs/{job_id}`, never a job id), or
`unmatched`; the model is the one this ingress serves unless the request named another
that a handler put in `scope["state"]["rayscribe_model"]`. Ray Serve's own
`ray_serve_num_http_requests_total` counts the same answers by route prefix and method.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.core.metrics import telemetry


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, model: str) -> None:
        self.app = app
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            model = (scope.get("state") or {}).get("rayscribe_model") or self.model
            telemetry.request(route, str(model), status)
