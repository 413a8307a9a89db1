"""Database schema, writes and reads shared by the listener, the worker and the worklist,
one package per domain: each keeps its tables (``tables``) next to its writes and reads.

    instances   studies 1─* instances 1─* predictions: ``tables``, ``statuses`` (received →
                queued → processing → done | not_eligible | failed), ``writes`` (record →
                enqueued → claimed under a lease → final; the reconciler's sweeps),
                ``reads`` (one instance, its file, its heatmap) and ``stats`` (what a
                metrics scrape reads)
    worklist    ``reads``: the worklist, its pages and counts, a study page
    reading     study_reads, answers: ``tables``; ``store`` (claim, release, answer, the
                read-state query, answers as training labels)
    accounts    users, web_sessions, api_tokens: ``tables``; ``store`` (sign-in, sessions,
                tokens)
    audit       audit_log (append-only): ``tables``; ``store`` (append, list, export)
    registry    models, population_strata: ``tables``; ``store`` (register, the state
                transitions, the enabled strata)
    results     result_sends and the studies' result state: ``states``, ``tables``,
                ``store`` (completeness, what is sent, every attempt)
    hl7         hl7_sends: ``tables``; ``store`` (the send lock, every attempt of an ORU^R01
                to the RIS, the newest per receiver for the pages)
    conflicts   instance_conflicts: ``tables``; ``store``
    drift       reads only: the active model's drift against its reference
    roles       least privilege: one Postgres login role per process kind and the grant map
                (``GRANTS``) ``cxr-triage migrate`` applies after every upgrade

The schema is created by Alembic (``migrations/``); ``schema`` gathers every domain's
tables on one ``Base.metadata``, the single description of it. ``engine`` builds the
engine, ``errors`` holds the accounts' and reading's errors.
"""

from cxr_db.engine import make_engine
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.instances.tables import Instance, Prediction, Study
from cxr_db.schema import Base

__all__ = ["Base", "Instance", "InstanceStatus", "Prediction", "Study", "make_engine"]
