"""`job_speaker_references`: the known speakers of a `diarized_json` job.

`known_speaker_names[]` and `known_speaker_references[]` given with a job are decoded at
submission and kept here (16 kHz 16-bit PCM), out of the job row that every progress write
rewrites, until the tracker has stored the job's speaker turns. Deleted with the job's data
by DELETE and retention, and by the cascade where the database has one.

Revision ID: 0006_job_speaker_references
Revises: 0005_job_speakers
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_job_speaker_references"
down_revision = "0005_job_speakers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_speaker_references",
        sa.Column(
            "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("pcm", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_speaker_references")
