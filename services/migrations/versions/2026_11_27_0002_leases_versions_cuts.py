"""Global lease tokens, job versions, interruptions, error codes and chunk cut points.

`tracker_epochs` (an epoch per tracker name, so two trackers could hold the same number)
becomes `tracker_incarnations`: one row per tracker (re)start whose autoincrement token is
unique across every tracker and whose heartbeat tells which models are served.

Revision ID: 0002_leases_versions_cuts
Revises: 0001_create_jobs
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_leases_versions_cuts"
down_revision = "0001_create_jobs"
branch_labels = None
depends_on = None

def _job_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("interruptions", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("version", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("chunk_s", sa.Float(), nullable=True),
        sa.Column("cut_points", sa.JSON(), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in _job_columns():
            batch.add_column(column)
    op.create_table(
        "tracker_incarnations",
        sa.Column("token", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_tracker_incarnations_model", "tracker_incarnations", ["model", "heartbeat_at"]
    )
    op.create_index("ix_idempotency_keys_created", "idempotency_keys", ["created_at"])
    op.drop_table("tracker_epochs")


def downgrade() -> None:
    op.create_table(
        "tracker_epochs",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
    )
    op.drop_index("ix_idempotency_keys_created", table_name="idempotency_keys")
    op.drop_index("ix_tracker_incarnations_model", table_name="tracker_incarnations")
    op.drop_table("tracker_incarnations")
    with op.batch_alter_table("jobs") as batch:
        for column in reversed(_job_columns()):
            batch.drop_column(column.name)
