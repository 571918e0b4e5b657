"""`jobs.options` holds the whole transcription request, as `TranscriptionRequest` dumps it.

Rows written before held only the decoding and rendering fields (`language`, `prompt`,
`temperature`, `response_format`, `timestamp_granularities`); the request's `task` and
`model` were columns only. Both are copied into the JSON, so every row reads back as the
same model. The idempotency fingerprint is computed from the same fields as before (not
`model`), so a key stored before this revision still matches its retry after it.

Revision ID: 0003_request_spec_options
Revises: 0002_leases_versions_cuts
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0003_request_spec_options"
down_revision = "0002_leases_versions_cuts"
branch_labels = None
depends_on = None

# One statement per dialect (a loop over rows would not scale to a large table).
UPGRADE = {
    "postgresql": "UPDATE jobs SET options = (options::jsonb "
    "|| jsonb_build_object('task', task, 'model', model))::json",
    "sqlite": "UPDATE jobs SET options = json_set(options, '$.task', task, '$.model', model)",
}
DOWNGRADE = {
    "postgresql": "UPDATE jobs SET options = (options::jsonb - 'task' - 'model')::json",
    "sqlite": "UPDATE jobs SET options = json_remove(options, '$.task', '$.model')",
}


def _run(statements: dict[str, str]) -> None:
    dialect = op.get_bind().dialect.name
    if dialect not in statements:
        raise NotImplementedError(f"no jobs.options migration for {dialect}")
    op.execute(statements[dialect])


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
