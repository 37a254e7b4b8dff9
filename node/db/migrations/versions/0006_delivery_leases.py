"""Delivery leases and early wake-ups.

``claimed_until``/``claim_token``: the short lease of the worker sending a delivery, renewed by
its heartbeat while the association runs, so a delivery whose worker died is sent again within
seconds. ``waiting_for_destination``/``woken_early_at``: a delivery backing off because its
destination did not answer is made due at once when the destination answers again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("claim_token", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("waiting_for_destination", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("woken_early_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("woken_early_at")
        batch.drop_column("waiting_for_destination")
        batch.drop_column("claim_token")
        batch.drop_column("claimed_until")
