"""Limits at the HTTP edge: per-user request rate, audio-seconds, job quotas, and CORS.

`install_limits` hangs one `EdgeLimits` on the app (per ingress replica; the counts live in
Redis, so replicas share them) and adds the CORS middleware. The request rate is a
middleware (`RequestRateMiddleware`); routes take the other parts through the dependencies
below; the caller is the `Principal` of deployments/auth.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, BinaryIO, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.auth import PrincipalDep
from deployments.errors import error_response
from services.auth.principal import ANONYMOUS, Principal
from services.core.health import ReadinessService
from services.core.settings import Settings
from services.limits.errors import RateLimitExceededError, limit_headers
from services.limits.limiter import Kind, UsageLimiter
from services.limits.quotas import JobQuota
from services.limits.usage import AudioMeter, declared_charge_s

T = TypeVar("T")

EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Idempotent-Replayed",
]


@dataclass
class EdgeLimits:
    limiter: UsageLimiter
    audio: AudioMeter
    quota: JobQuota


def install_limits(app: FastAPI, settings: Settings, readiness: ReadinessService) -> None:
    limiter = UsageLimiter(settings.limits, settings.redis)
    app.state.limits = EdgeLimits(limiter, AudioMeter(limiter), JobQuota(settings.limits))
    if limiter.enabled:
        readiness.add_optional("rate_limits", limiter.status)
    origins = settings.server.cors_origins
    if origins:
        # Tokens travel in the Authorization header, never in cookies: credentials are
        # never allowed, so `*` cannot leak a logged-in session to any site.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )


def _limits(request: Request) -> EdgeLimits:
    limits: EdgeLimits = request.app.state.limits
    return limits


class RequestRateMiddleware:
    """The per-user request rate on `/v1/*`, checked before the route reads the body: a
    refused client has sent its headers and nothing more (a route dependency would run only
    after FastAPI had read the whole upload). Sits inside `AuthMiddleware`, which names the
    caller; probes (`/healthz`, `/readyz`) are never limited."""

    def __init__(self, app: ASGIApp, limits: Callable[[], EdgeLimits]) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        limiter = self.limits().limiter
        quota = limiter.quota(Kind.REQUESTS)
        principal: Principal = scope.get("state", {}).get("principal", ANONYMOUS)
        decision = await limiter.take(Kind.REQUESTS, principal.limit_key)
        if quota is None or decision is None:
            await self.app(scope, receive, send)
            return
        if not decision.allowed:
            refusal = RateLimitExceededError(
                f"Too many requests: at most {decision.limit:g} per {quota.period_s:g} s; "
                "retry after the time in the Retry-After header.",
                decision,
            )
            await error_response(refusal)(scope, receive, send)
            return
        headers = limit_headers(decision.limit, decision.remaining, decision.reset_s)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _sync_audio(request: Request, principal: PrincipalDep) -> Callable[[float], Awaitable[None]]:
    meter = _limits(request).audio

    async def admit(seconds: float) -> None:
        await meter.admit(principal.limit_key, seconds)

    return admit


AudioAdmissionDep = Annotated[Callable[[float], Awaitable[None]], Depends(_sync_audio)]
"""Charges a sync request's decoded length before inference (429 when over)."""


@dataclass
class JobAdmission:
    limits: EdgeLimits
    key: str

    async def submit(
        self, upload: BinaryIO, submit: Callable[[JobQuota], Awaitable[tuple[T, bool]]]
    ) -> tuple[T, bool]:
        """Charge the declared audio, run `submit` (it checks the quota in its transaction),
        and refund the charge when no new job came of it (refused, failed or replayed)."""
        charged = 0.0
        if self.limits.audio.enabled:
            charged = await asyncio.to_thread(declared_charge_s, upload)
            await self.limits.audio.admit(self.key, charged)
        try:
            result, created = await submit(self.limits.quota)
        except BaseException:
            await self.limits.audio.charge(self.key, -charged)
            raise
        if not created:
            await self.limits.audio.charge(self.key, -charged)
        return result, created


def _job_admission(request: Request, principal: PrincipalDep) -> JobAdmission:
    return JobAdmission(_limits(request), principal.limit_key)


JobAdmissionDep = Annotated[JobAdmission, Depends(_job_admission)]
