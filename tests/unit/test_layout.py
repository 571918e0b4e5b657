"""The layering rules hold: checked on the source, so a violation fails the build.

- `services/` is plain Python: it never imports Ray or FastAPI.
- Neither `services/` nor `cluster/` imports from `deployments/` (the edge depends on them,
  never the other way round).
- No `ray.serve._private` import outside `tests/`.
- Every module in `services/`, `deployments/` and `cluster/` stays under 400 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "deployments", "cluster")
MAX_LINES = 400


def _modules(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _offenders(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(*packages)
        for name in _imports(path)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]


def test_services_import_neither_ray_nor_fastapi_nor_the_edge() -> None:
    assert _offenders(("services",), ("ray", "fastapi", "starlette", "deployments")) == []


def test_cluster_never_imports_the_edge() -> None:
    assert _offenders(("cluster",), ("deployments",)) == []


def test_no_private_serve_api_outside_tests() -> None:
    assert _offenders((*PACKAGES, "benchmarks", "scripts"), ("ray.serve._private",)) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_stays_under_the_size_limit(package: str) -> None:
    too_long = {
        str(path.relative_to(ROOT)): count
        for path in _modules(package)
        if (count := len(path.read_text().splitlines())) >= MAX_LINES
    }
    assert too_long == {}, f"split these along a real seam (limit {MAX_LINES} lines)"


def test_the_checks_can_fail() -> None:
    """The scanner sees what it must: this file imports pytest, found by the same code."""
    assert "pytest" in set(_imports(Path(__file__)))
