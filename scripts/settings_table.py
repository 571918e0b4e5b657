"""Print the README's settings table from `Settings` itself, so the docs cannot drift.

.venv/bin/python scripts/settings_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from services.core.settings import Settings


def _rows(model: type[BaseModel], prefix: str, path: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation: Any = field.annotation
        env = f"{prefix}{name.upper()}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{env}__", f"{path}{name}.")
            continue
        default = field.default
        if default is PydanticUndefined:
            shown = "(required)"
        elif default is None:
            shown = "(unset)"
        else:
            shown = str(getattr(default, "value", default))
        rows.append((env, shown, field.description or ""))
    return rows


def settings_table() -> str:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for env, default, doc in _rows(Settings, "RAYSCRIBE_", ""):
        lines.append(f"| `{env}` | `{default}` | {doc} |")
    return "\n".join(lines)


START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def write_readme(readme: Path) -> None:
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{settings_table()}\n{END}{tail}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_readme(Path(__file__).resolve().parents[1] / "README.md")
    else:
        print(settings_table())
