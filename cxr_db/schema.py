"""The one description of the schema: every domain's tables on one ``Base.metadata``.

Each domain keeps its tables next to its writes and reads (``cxr_db.<domain>.tables``);
importing this module registers all of them, so Alembic (``migrations/env.py``) and the
test that compares the migrations with the ORM see the whole schema.
"""

from __future__ import annotations

from cxr_db.accounts import tables as accounts_tables
from cxr_db.audit import tables as audit_tables
from cxr_db.base import Base
from cxr_db.conflicts import tables as conflicts_tables
from cxr_db.escalations import tables as escalations_tables
from cxr_db.hl7 import tables as hl7_tables
from cxr_db.instances import tables as instances_tables
from cxr_db.reading import tables as reading_tables
from cxr_db.registry import tables as registry_tables
from cxr_db.results import tables as results_tables

DOMAIN_TABLES = (
    instances_tables,
    results_tables,
    conflicts_tables,
    accounts_tables,
    audit_tables,
    reading_tables,
    registry_tables,
    escalations_tables,
    hl7_tables,
)
"""The modules that define tables, one per domain."""

__all__ = ["DOMAIN_TABLES", "Base"]
