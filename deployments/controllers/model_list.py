"""`GET /v1/models`: every served model, in OpenAI's list shape, with what it can do."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from deployments.dependencies import TranscriptionServiceDep
from deployments.errors import error_responses
from services.core.errors import NotFoundError
from services.transcription.models import ServedModel

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "rayscribe"
    default: bool = Field(
        default=False, description="Ours: `whisper-1` names this model (the default)."
    )
    translates: bool = Field(
        default=False,
        description="Ours: whether `/v1/audio/translations` translates (English-only models "
        "answer with the English transcript).",
    )
    languages: list[str] = Field(
        default_factory=list, description="Ours: ISO-639-1 codes the model transcribes."
    )

    @classmethod
    def of(cls, model: ServedModel, model_id: str | None = None) -> ModelCard:
        return cls(
            id=model_id or model.id,
            default=model.default,
            translates=model.translates,
            languages=list(model.languages),
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("", responses=error_responses())
async def list_models(service: TranscriptionServiceDep) -> ModelList:
    return ModelList(data=[ModelCard.of(model) for model in service.models])


@router.get("/{model_id}", responses=error_responses(404))
async def get_model(model_id: str, service: TranscriptionServiceDep) -> ModelCard:
    model = service.models.get(model_id)
    if model is None:
        raise NotFoundError(f"The model {model_id!r} does not exist.", param="model")
    return ModelCard.of(model, model_id)
