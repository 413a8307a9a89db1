"""Helpers for the reading-workflow tests (accounts, reading, audit) on real Postgres.

The shared ``engine`` fixture empties studies, instances and predictions; ``clean`` also
empties the reading tables. ``audit_log`` cannot be emptied (Postgres refuses: that is the
point), so tests read only the entries after a mark taken when they start.
"""

from __future__ import annotations

from datetime import UTC, datetime

from argon2 import PasswordHasher
from sqlalchemy import Engine, func, select, text

from cxr_common.passwords import Passwords
from cxr_db.accounts import store as accounts
from cxr_db.accounts.tables import Role
from cxr_db.audit import store as audit
from cxr_db.audit.store import Actor, AuditQuery, AuditRecord
from cxr_db.audit.tables import ActorKind, AuditEntry
from cxr_db.instances import writes as repo
from tests.db_rows import prediction

PASSWORD = "correct horse battery staple"
ADMIN = Actor("cli:test", ActorKind.CLI)


def clean(engine: Engine) -> Engine:
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE users, api_tokens, web_sessions, study_reads, answers "
                "RESTART IDENTITY CASCADE"
            )
        )
    return engine


def cheap_passwords(time_cost: int = 1) -> Passwords:
    """argon2id with small parameters: the same code path, a fraction of the CPU."""
    return Passwords(PasswordHasher(time_cost=time_cost, memory_cost=1024, parallelism=1))


def db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        value: datetime = conn.execute(select(func.now())).scalar_one()
    return value.astimezone(UTC)


def audit_mark(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(AuditEntry.id), 0))).scalar_one())


def audit_after(engine: Engine, mark: int) -> list[AuditRecord]:
    """Entries written after ``mark``, oldest first."""
    return [e for e in audit.iter_entries(engine, AuditQuery()) if e.id > mark]


def add_user(
    engine: Engine, name: str, role: Role = Role.RADIOLOGIST, passwords: Passwords | None = None
) -> accounts.UserInfo:
    return accounts.add_user(
        engine, name, PASSWORD, role, passwords=passwords or cheap_passwords(), actor=ADMIN
    )


def scored_study(
    engine: Engine,
    study: str,
    probabilities: list[float],
    storage_uris: list[str] | None = None,
    version: str = "v1",
) -> list[int]:
    """A study whose instances were received and scored; returns the instance ids."""
    ids = []
    for n, p in enumerate(probabilities):
        sop = f"{study}.{n + 1}"
        uri = storage_uris[n] if storage_uris else f"file:///nowhere/{sop}.dcm"
        rec = repo.InstanceRecord(
            study_instance_uid=study,
            sop_instance_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
            series_instance_uid=None,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            accession_number=None,
            modality="CR",
            body_part="CHEST",
            view_position="PA",
            calling_ae_title="TEST",
            storage_uri=uri,
            size_bytes=1,
        )
        instance_id = repo.record_instance(engine, rec).instance_id
        repo.record_prediction(engine, instance_id, prediction(p, version=version))
        ids.append(instance_id)
    return ids
