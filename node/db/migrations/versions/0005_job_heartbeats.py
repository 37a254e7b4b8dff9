"""Job heartbeats, progress and interruptions.

``heartbeat_at`` is renewed by the worker running the job every few seconds, so a job whose
worker died is noticed within seconds; ``progress`` is the point the attempt reached (image
and stage); ``interruptions`` lists every attempt cut short by the death of its process, with
the evidence used to decide whether the study itself is to blame.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("progress", sa.JSON, nullable=True))
        batch.add_column(sa.Column("interruptions", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("interruptions")
        batch.drop_column("progress")
        batch.drop_column("heartbeat_at")
