"""payment_attempt_hourly: attempts per UTC hour and currency, kept by triggers

The dashboard's payment figures sum this table over whole hours instead of scanning every
attempt of the period. Triggers on payment_attempts keep it equal to

    SELECT <hour of created>, coalesce(currency, ''), count(*), <succeeded>, <failed>,
           <sum of succeeded amounts>
    FROM payment_attempts GROUP BY 1, 2

in the same transaction as each write, whatever writes (webhooks, demo, tests, bulk loads):
an insert adds its attempt to its (hour, currency) row with one upsert; a delete subtracts it
(and drops a row left with no attempt); an update that changes created, outcome, currency or
amount does both. The SQL is written out here for each dialect, frozen with this revision.

SQLite keeps created as naive UTC text "YYYY-MM-DD HH:MM:SS.ffffff" (core.models.UTCDateTime),
so its hour is the text cut at the hour, in the same format. A later SQLite batch migration
that rebuilds payment_attempts drops these triggers with the old table: create them again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.models


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "payment_attempt_hourly"
COLUMNS = "hour, currency, attempts, succeeded, failed, succeeded_amount"
CHANGED = ("created", "outcome", "currency", "amount")

# --- SQLite ------------------------------------------------------------------------------------


def _sqlite_key(row: str) -> str:
    return (
        f"hour = substr({row}.created, 1, 13) || ':00:00.000000' "
        f"AND currency = coalesce({row}.currency, '')"
    )


def _sqlite_add(row: str) -> str:
    return f"""
    INSERT INTO {TABLE} ({COLUMNS})
    VALUES (substr({row}.created, 1, 13) || ':00:00.000000', coalesce({row}.currency, ''), 1,
            {row}.outcome = 'succeeded', {row}.outcome = 'failed',
            CASE WHEN {row}.outcome = 'succeeded' THEN {row}.amount ELSE 0 END)
    ON CONFLICT (hour, currency) DO UPDATE SET
        attempts = attempts + 1,
        succeeded = succeeded + excluded.succeeded,
        failed = failed + excluded.failed,
        succeeded_amount = succeeded_amount + excluded.succeeded_amount;"""


def _sqlite_subtract(row: str) -> str:
    return f"""
    UPDATE {TABLE} SET
        attempts = attempts - 1,
        succeeded = succeeded - ({row}.outcome = 'succeeded'),
        failed = failed - ({row}.outcome = 'failed'),
        succeeded_amount = succeeded_amount
            - CASE WHEN {row}.outcome = 'succeeded' THEN {row}.amount ELSE 0 END
    WHERE {_sqlite_key(row)};
    DELETE FROM {TABLE} WHERE {_sqlite_key(row)} AND attempts = 0;"""


_SQLITE_CHANGED = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in CHANGED)

SQLITE_TRIGGERS = {
    f"{TABLE}_insert": f"""
CREATE TRIGGER {TABLE}_insert AFTER INSERT ON payment_attempts
BEGIN{_sqlite_add("NEW")}
END""",
    f"{TABLE}_update": f"""
CREATE TRIGGER {TABLE}_update AFTER UPDATE OF {", ".join(CHANGED)} ON payment_attempts
WHEN {_SQLITE_CHANGED}
BEGIN{_sqlite_subtract("OLD")}{_sqlite_add("NEW")}
END""",
    f"{TABLE}_delete": f"""
CREATE TRIGGER {TABLE}_delete AFTER DELETE ON payment_attempts
BEGIN{_sqlite_subtract("OLD")}
END""",
}

SQLITE_BACKFILL = f"""
INSERT INTO {TABLE} ({COLUMNS})
SELECT substr(created, 1, 13) || ':00:00.000000', coalesce(currency, ''), count(*),
       sum(outcome = 'succeeded'), sum(outcome = 'failed'),
       sum(CASE WHEN outcome = 'succeeded' THEN amount ELSE 0 END)
FROM payment_attempts
GROUP BY 1, 2"""

# --- PostgreSQL --------------------------------------------------------------------------------

POSTGRES_APPLY = f"""
CREATE FUNCTION {TABLE}_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    remaining integer;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE {TABLE} SET
            attempts = attempts - 1,
            succeeded = succeeded - (OLD.outcome = 'succeeded')::integer,
            failed = failed - (OLD.outcome = 'failed')::integer,
            succeeded_amount = succeeded_amount
                - CASE WHEN OLD.outcome = 'succeeded' THEN OLD.amount ELSE 0 END
        WHERE hour = date_trunc('hour', OLD.created, 'UTC')
          AND currency = coalesce(OLD.currency, '')
        RETURNING attempts INTO remaining;
        IF remaining = 0 THEN
            DELETE FROM {TABLE}
            WHERE hour = date_trunc('hour', OLD.created, 'UTC')
              AND currency = coalesce(OLD.currency, '');
        END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO {TABLE} ({COLUMNS})
        VALUES (date_trunc('hour', NEW.created, 'UTC'), coalesce(NEW.currency, ''), 1,
                (NEW.outcome = 'succeeded')::integer, (NEW.outcome = 'failed')::integer,
                CASE WHEN NEW.outcome = 'succeeded' THEN NEW.amount ELSE 0 END)
        ON CONFLICT (hour, currency) DO UPDATE SET
            attempts = {TABLE}.attempts + 1,
            succeeded = {TABLE}.succeeded + excluded.succeeded,
            failed = {TABLE}.failed + excluded.failed,
            succeeded_amount = {TABLE}.succeeded_amount + excluded.succeeded_amount;
    END IF;
    RETURN NULL;
END
$$"""

# TRUNCATE fires no row trigger.
POSTGRES_TRUNCATE = f"""
CREATE FUNCTION {TABLE}_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE {TABLE};
    RETURN NULL;
END
$$"""

_POSTGRES_CHANGED = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in CHANGED)

POSTGRES_TRIGGERS = {
    f"{TABLE}_insert_delete": f"""
CREATE TRIGGER {TABLE}_insert_delete AFTER INSERT OR DELETE ON payment_attempts
FOR EACH ROW EXECUTE FUNCTION {TABLE}_apply()""",
    f"{TABLE}_update": f"""
CREATE TRIGGER {TABLE}_update AFTER UPDATE OF {", ".join(CHANGED)} ON payment_attempts
FOR EACH ROW WHEN ({_POSTGRES_CHANGED}) EXECUTE FUNCTION {TABLE}_apply()""",
    f"{TABLE}_truncate": f"""
CREATE TRIGGER {TABLE}_truncate AFTER TRUNCATE ON payment_attempts
FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_truncate()""",
}

POSTGRES_BACKFILL = f"""
INSERT INTO {TABLE} ({COLUMNS})
SELECT date_trunc('hour', created, 'UTC'), coalesce(currency, ''), count(*),
       count(*) FILTER (WHERE outcome = 'succeeded'), count(*) FILTER (WHERE outcome = 'failed'),
       coalesce(sum(amount) FILTER (WHERE outcome = 'succeeded'), 0)
FROM payment_attempts
GROUP BY 1, 2"""


def _execute(sql: str) -> None:
    # Straight to the driver: text() would take ':00' in the SQL for a bind parameter.
    op.get_bind().exec_driver_sql(sql)


def upgrade() -> None:
    op.create_table(TABLE,
    sa.Column('hour', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('succeeded', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('succeeded_amount', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('hour', 'currency', name=op.f('pk_payment_attempt_hourly'))
    )
    if op.get_bind().dialect.name == "postgresql":
        for sql in (POSTGRES_APPLY, POSTGRES_TRUNCATE, *POSTGRES_TRIGGERS.values(),
                    POSTGRES_BACKFILL):
            _execute(sql)
    else:
        for sql in (*SQLITE_TRIGGERS.values(), SQLITE_BACKFILL):
            _execute(sql)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in POSTGRES_TRIGGERS:
            _execute(f"DROP TRIGGER {name} ON payment_attempts")
        _execute(f"DROP FUNCTION {TABLE}_apply()")
        _execute(f"DROP FUNCTION {TABLE}_truncate()")
    else:
        for name in SQLITE_TRIGGERS:
            _execute(f"DROP TRIGGER {name}")
    op.drop_table(TABLE)
