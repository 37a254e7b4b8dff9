"""The node's database: typed SQLAlchemy models, sessions and Alembic migrations."""

from node.db.schema import Base, Instance, Job, Study
from node.db.session import Database

__all__ = ["Base", "Database", "Instance", "Job", "Study"]
