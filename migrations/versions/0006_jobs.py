"""jobs: the lock and progress of long operator jobs (reconciliation), one row per job name

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.models


revision: str = '0006'
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'jobs',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('token', sa.String(length=64), nullable=True),
        sa.Column('started_by', sa.String(length=255), nullable=True),
        sa.Column('started_at', core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('heartbeat_at', core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('finished_at', core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('step', sa.String(length=255), nullable=True),
        sa.Column('done', sa.Integer(), nullable=False),
        sa.Column('total', sa.Integer(), nullable=True),
        sa.Column('result', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_jobs')),
    )


def downgrade() -> None:
    op.drop_table('jobs')
