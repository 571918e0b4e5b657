"""The served models: which ids clients may send as `model`, and what each can do.

`RAYSCRIBE_WHISPER__MODELS` lists the models to serve (empty: `RAYSCRIBE_WHISPER__MODEL`
alone); `RAYSCRIBE_WHISPER__MODEL` is the default, the one `whisper-1` names. Each served
model runs in a Whisper deployment of its own (`deployments/app.py`), so it batches only
with itself and scales on its own load; the ingress, the job tracker and bulk jobs route by
the id this module resolves.

`ServedModels.resolve` is the one routing decision (`whisper-1` -> the default, an unknown
id -> 400 `model_not_found`), and `settings_for` gives the `Settings` a model's engine is
built from (`WhisperEngine.from_settings`), so every per-model path (model files, result
cache version, engine) reuses the single-model code unchanged. Knowing whether a model is
multilingual never loads it: bundled ids are known, a directory's vocabulary is counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.core.settings import Settings
from services.transcription.languages import LANGUAGE_NAMES
from services.transcription.model_files import BUNDLED_MODELS, model_id_of
from services.transcription.request import OPENAI_MODEL_ALIAS, ModelNotFoundError

MULTILINGUAL_VOCABULARY = 51865
"""CTranslate2's rule: a Whisper vocabulary this large or larger is multilingual."""
_BUNDLED_MULTILINGUAL = {"tiny.en": False, "base": True}
_LATE_LANGUAGES = ("yue",)
"""Codes only large-v3 and later know (its 100th language); older models have 99."""


@dataclass(frozen=True)
class ServedModel:
    id: str
    """What clients send as `model` and `/v1/models` lists."""
    weights: str
    """The `whisper.model` value it is loaded from: a bundled name or a directory."""
    default: bool
    """`whisper-1` names this one."""
    multilingual: bool

    @property
    def translates(self) -> bool:
        """English-only models cannot translate (a translation request is transcribed)."""
        return self.multilingual

    @property
    def languages(self) -> tuple[str, ...]:
        """ISO-639-1 codes the model transcribes."""
        if not self.multilingual:
            return ("en",)
        late = _lang_count(self.weights) >= 100
        return tuple(sorted(c for c in LANGUAGE_NAMES if late or c not in _LATE_LANGUAGES))


class ServedModels:
    """The models this deployment serves, the default first."""

    def __init__(self, models: list[ServedModel]) -> None:
        if sum(m.default for m in models) != 1:
            raise ValueError("exactly one served model must be the default")
        self._models = sorted(models, key=lambda m: not m.default)
        self._by_id = {m.id: m for m in self._models}
        if len(self._by_id) != len(self._models):
            ids = [m.id for m in self._models]
            raise ValueError(f"two served models have the same id: {ids}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ServedModels:
        """Refuses (ValueError) a default missing from a non-empty `whisper.models`."""
        whisper = settings.whisper
        names = list(dict.fromkeys(whisper.models or [whisper.model]))
        if whisper.model not in names:
            raise ValueError(
                f"whisper.model ({whisper.model!r}) must be one of whisper.models ({names}): "
                "it is the default model, the one `whisper-1` names."
            )
        return cls(
            [
                ServedModel(
                    id=model_id_of(name),
                    weights=name,
                    default=name == whisper.model,
                    multilingual=is_multilingual(name),
                )
                for name in names
            ]
        )

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    @property
    def default(self) -> ServedModel:
        return self._models[0]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    @property
    def accepted_ids(self) -> tuple[str, ...]:
        """Every value `model` may take: `whisper-1` and each served id."""
        return (OPENAI_MODEL_ALIAS, *self._by_id)

    def get(self, model_id: str) -> ServedModel | None:
        """The served model `model_id` names (`whisper-1`: the default), or None."""
        if model_id == OPENAI_MODEL_ALIAS:
            return self.default
        return self._by_id.get(model_id)

    def resolve(self, requested: str) -> ServedModel:
        """The model a request's `model` routes to; 400 `model_not_found` if none."""
        model = self.get(requested)
        if model is None:
            raise ModelNotFoundError(
                f"The model {requested!r} does not exist here; this server serves "
                f"{', '.join(repr(m) for m in self.accepted_ids)}.",
                param="model",
            )
        return model

    def settings_for(self, settings: Settings, model_id: str) -> Settings:
        """`settings` as if `model_id` were the only model: what its engine, its model files
        and its result cache version are built from (the bulk job builds its engine so)."""
        model = self.resolve(model_id)
        whisper = settings.whisper.model_copy(update={"model": model.weights, "models": []})
        return settings.model_copy(update={"whisper": whisper})


def is_multilingual(weights: str) -> bool:
    """From the bundled table or the vocabulary's size, without loading the model."""
    if weights in BUNDLED_MODELS:
        return _BUNDLED_MULTILINGUAL[weights]
    path = Path(weights).expanduser()
    vocabulary = path / "vocabulary.json"
    if vocabulary.is_file():
        return len(json.loads(vocabulary.read_text())) >= MULTILINGUAL_VOCABULARY
    text = path / "vocabulary.txt"
    if text.is_file():
        with text.open(encoding="utf-8") as lines:
            return sum(1 for _ in lines) >= MULTILINGUAL_VOCABULARY
    return not path.name.endswith(".en")  # OpenAI's naming: `*.en` are English-only


def _lang_count(weights: str) -> int:
    config = Path(weights).expanduser() / "config.json"
    if weights in BUNDLED_MODELS or not config.is_file():
        return 99
    try:
        return len(json.loads(config.read_text()).get("lang_ids", []))
    except (OSError, ValueError):
        return 99
