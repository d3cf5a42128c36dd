"""webhook_rejections (rejected requests counted per minute) and stripe_events.payload_pruned_at

Rejected webhook requests are no longer one webhook_deliveries row each: they are counted per
UTC minute, reason and source address in webhook_rejections, and webhook_deliveries keeps a
bounded sample of them. `python -m core retention` may replace an old event's raw body by a
stub; payload_pruned_at says when (and keeps a second run from doing it again).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.models


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'webhook_rejections',
        sa.Column('minute', core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('reason', sa.String(length=64), nullable=False),
        sa.Column('remote_addr', sa.String(length=64), nullable=False),
        sa.Column('deliveries', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            'minute', 'reason', 'remote_addr', name=op.f('pk_webhook_rejections')
        ),
    )
    op.add_column(
        'stripe_events',
        sa.Column('payload_pruned_at', core.models.UTCDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table('stripe_events') as batch:
        batch.drop_column('payload_pruned_at')
    op.drop_table('webhook_rejections')
