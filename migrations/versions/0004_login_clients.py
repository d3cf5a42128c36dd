"""login_attempts: the client an attempt came from, and when an admin cleared a failure

Issue 12 (login abuse): lockout counts failures per username *and* client (with growing
delays) under a higher per-username ceiling, and `python -m core users unlock` clears a
user's failures instead of waiting. Both columns are nullable: rows written before this
revision have no client and were never cleared.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.models


revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("login_attempts") as batch:
        batch.add_column(sa.Column("client", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("cleared_at", core.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch.create_index(
            "ix_login_attempts_username_client_at", ["username", "client", "at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("login_attempts") as batch:
        batch.drop_index("ix_login_attempts_username_client_at")
        batch.drop_column("cleared_at")
        batch.drop_column("client")
