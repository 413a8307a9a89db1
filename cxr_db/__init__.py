"""Database schema, writes and reads shared by the listener, the worker and the worklist.

Tables: ``studies`` 1─* ``instances`` 1─* ``predictions``. Instance status moves
received → queued → processing → done | not_eligible | failed (``statuses``). The schema
is created by Alembic (``migrations/``); the ORM classes in ``schema`` are the single
description of it. ``repository`` holds the writes (record → enqueued → processing →
final), ``reads`` every read the worklist, the CLI and the JSON API make.
"""

from cxr_db.engine import make_engine
from cxr_db.schema import Base, Instance, Prediction, Study
from cxr_db.statuses import InstanceStatus

# The registry tables (revision 0006) belong to ``Base.metadata`` wherever it is used.
from cxr_db import models as _models  # noqa: F401  isort: skip

__all__ = ["Base", "Instance", "InstanceStatus", "Prediction", "Study", "make_engine"]
