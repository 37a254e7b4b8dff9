"""Results, output objects, deliveries and delivery attempts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("instance_id", sa.Integer, sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("probabilities", sa.JSON),
        sa.Column("no_finding", sa.Float),
        sa.Column("thresholds", sa.JSON),
        sa.Column("decisions", sa.JSON),
        sa.Column("model_versions", sa.JSON),
        sa.Column("timings", sa.JSON),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("job_id", "instance_id", "policy", name="uq_result_job_instance_policy"),
    )
    op.create_index("ix_results_job_id", "results", ["job_id"])
    op.create_index("ix_results_instance_id", "results", ["instance_id"])
    op.create_index("ix_results_status", "results", ["status"])

    op.create_table(
        "output_objects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id")),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("job_id", "sop_instance_uid", name="uq_output_job_sop_instance"),
    )
    op.create_index("ix_output_objects_job_id", "output_objects", ["job_id"])
    op.create_index("ix_output_objects_result_id", "output_objects", ["result_id"])
    op.create_index("ix_output_objects_sop_instance_uid", "output_objects", ["sop_instance_uid"])

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("output_object_id", sa.Integer, sa.ForeignKey("output_objects.id"), nullable=False),
        sa.Column("destination", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TS),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("delivered_at", TS),
        sa.UniqueConstraint("output_object_id", "destination", name="uq_delivery_output_destination"),
    )
    op.create_index("ix_deliveries_output_object_id", "deliveries", ["output_object_id"])
    op.create_index("ix_deliveries_state", "deliveries", ["state"])
    op.create_index("ix_deliveries_next_attempt_at", "deliveries", ["next_attempt_at"])

    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("delivery_id", "number", name="uq_delivery_attempt_number"),
    )
    op.create_index("ix_delivery_attempts_delivery_id", "delivery_attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("delivery_attempts")
    op.drop_table("deliveries")
    op.drop_table("output_objects")
    op.drop_table("results")
