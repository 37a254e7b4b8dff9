"""Instance conflicts: C-STOREs of a known SOP Instance UID with different content.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_conflicts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("calling_aet", sa.String(16)),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("stored_sha256", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_instance_conflicts_sop_instance_uid", "instance_conflicts", ["sop_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_instance_conflicts_sop_instance_uid", "instance_conflicts")
    op.drop_table("instance_conflicts")
