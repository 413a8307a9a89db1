"""Database schema and queries shared by the listener, the worker and the worklist.

Tables: ``studies`` 1─* ``instances`` 1─* ``predictions``. Instance status moves
received → queued → processing → done | not_eligible | failed. The schema is created by
Alembic (``migrations/``); the ORM classes here are the single description of it.
"""

from cxr_db.engine import make_engine
from cxr_db.schema import Base, Instance, InstanceStatus, Prediction, Study

__all__ = ["Base", "Instance", "InstanceStatus", "Prediction", "Study", "make_engine"]
