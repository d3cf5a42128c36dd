"""receiver_heartbeats: the row /healthz rewrites to prove the database takes a write

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 09:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "receiver_heartbeats",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("beat_at", core.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_receiver_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("receiver_heartbeats")
