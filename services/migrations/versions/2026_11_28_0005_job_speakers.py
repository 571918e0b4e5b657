"""`job_speakers`: the speaker turns of a `diarized_json` job, stored once per job.

Diarization runs once over a job's whole file (not per chunk); its turns are kept here so
a resumed or retried job reuses them and its labels never change. Deleted with the job's
result by retention, and by the cascade where the database has one.

Revision ID: 0005_job_speakers
Revises: 0004_batches
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_job_speakers"
down_revision = "0004_batches"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_speakers",
        sa.Column(
            "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("turns", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_speakers")
