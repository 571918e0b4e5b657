"""The caller of each request, as a FastAPI dependency.

Until token verification is wired in, every caller is the anonymous one (authentication
off, the dev default).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.auth.principal import ANONYMOUS, Principal


def current_principal(request: Request) -> Principal:
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]
