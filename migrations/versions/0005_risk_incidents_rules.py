"""risk incidents and rules: flags sharing attempts form one incident; rules live in the database

risk_incidents holds one row per incident (flags that share attempts, reviewed once);
risk_flags.incident_id points at it. risk_rule_sets holds every saved version of the detection
rules (thresholds and windows per entity kind and pattern, the allow list); the highest version
is live, and none means the defaults seeded from BURST_WINDOW_MINUTES / BURST_THRESHOLD.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.models


revision: str = '0005'
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('risk_incidents',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('first_seen', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('flags', sa.Integer(), nullable=False),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reviewed_by', sa.String(length=255), nullable=True),
    sa.Column('reviewed_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_risk_incidents'))
    )
    op.create_index('ix_risk_incidents_status', 'risk_incidents', ['status', 'last_seen'], unique=False)
    op.create_table('risk_rule_sets',
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_risk_rule_sets'))
    )
    op.add_column('risk_flags', sa.Column('incident_id', sa.Integer(), nullable=True))
    op.create_index(op.f('ix_risk_flags_incident_id'), 'risk_flags', ['incident_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('risk_flags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_risk_flags_incident_id'))
        batch_op.drop_column('incident_id')
    op.drop_table('risk_rule_sets')
    op.drop_index('ix_risk_incidents_status', table_name='risk_incidents')
    op.drop_table('risk_incidents')
