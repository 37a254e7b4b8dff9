"""Lifecycle states as enum types: studies.state, jobs.state, deliveries.state.

On PostgreSQL each column becomes a native enum (``study_state``, ``job_state``,
``delivery_state``), converted in place with ``USING state::<type>``; on SQLite the table is
rebuilt (Alembic batch mode) with a CHECK constraint on the allowed values. Existing rows keep
their values: they were already written as the members' values.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: (table, enum type name, allowed values), as in node.constants at this revision.
STATE_COLUMNS = (
    ("studies", "study_state", ("received", "queued", "running", "done", "delivered", "failed")),
    ("jobs", "job_state", ("queued", "running", "done", "failed")),
    ("deliveries", "delivery_state", ("pending", "delivered", "failed")),
)


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, create_constraint=True, length=16)


def upgrade() -> None:
    bind = op.get_bind()
    for table, type_name, values in STATE_COLUMNS:
        if bind.dialect.name == "postgresql":
            _enum(type_name, values).create(bind, checkfirst=True)
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN state TYPE {type_name} USING state::text::{type_name}"
            )
        else:
            with op.batch_alter_table(table, recreate="always") as batch:
                batch.alter_column(
                    "state", existing_type=sa.String(16), type_=_enum(type_name, values), existing_nullable=False
                )


def downgrade() -> None:
    bind = op.get_bind()
    for table, type_name, values in STATE_COLUMNS:
        if bind.dialect.name == "postgresql":
            op.execute(f"ALTER TABLE {table} ALTER COLUMN state TYPE VARCHAR(16) USING state::text")
            _enum(type_name, values).drop(bind, checkfirst=True)
        else:
            with op.batch_alter_table(table, recreate="always") as batch:
                batch.alter_column("state", existing_type=_enum(type_name, values), type_=sa.String(16))
