"""`python -m services.migrations upgrade|downgrade|current [revision]` on the configured DB."""

from __future__ import annotations

import sys

from alembic import command

from services.core.settings import Settings
from services.migrations import alembic_config


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("upgrade", "downgrade", "current"):
        print("usage: python -m services.migrations upgrade|downgrade|current [revision]")
        return 2
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = alembic_config(settings.database_url)
    if argv[0] == "current":
        command.current(config)
    elif argv[0] == "upgrade":
        command.upgrade(config, argv[1] if len(argv) > 1 else "head")
    else:
        command.downgrade(config, argv[1] if len(argv) > 1 else "base")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
