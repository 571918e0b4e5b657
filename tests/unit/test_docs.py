"""The README stays true: its settings table is the one the code generates."""

from pathlib import Path

from scripts.settings_table import settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_readme_settings_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end].strip() == settings_table(), (
        "README settings table is stale: paste `python scripts/settings_table.py` into it"
    )


def test_readme_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme
    assert "make test" in readme
