"""`GET /v1/models`: the served model, in OpenAI's list shape."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from deployments.dependencies import TranscriptionServiceDep
from deployments.errors import error_responses
from services.core.errors import NotFoundError

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "rayscribe"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("", responses=error_responses())
async def list_models(service: TranscriptionServiceDep) -> ModelList:
    return ModelList(data=[ModelCard(id=service.model_id)])


@router.get("/{model_id}", responses=error_responses(404))
async def get_model(model_id: str, service: TranscriptionServiceDep) -> ModelCard:
    if model_id not in service.accepted_model_ids:
        raise NotFoundError(f"The model {model_id!r} does not exist.", param="model")
    return ModelCard(id=model_id)
