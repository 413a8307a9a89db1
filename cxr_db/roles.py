"""Postgres least privilege: one login role per process kind, granted only what it uses.

    owner           the user that runs ``cxr-triage migrate`` (``CXR_DATABASE_URL`` of
                    migrate): creates the schema, owns every table, sequence and function,
                    is the only role that may change or empty ``audit_log``.
    cxr_listener    DICOM in: studies, instances, instance conflicts.
    cxr_scheduler   reconciler, completeness, escalation: instances, studies, escalations.
    cxr_worker      scoring: claims instances, writes predictions and the studies' flag
                    and score; reads the registry.
    cxr_results     results to PACS and escalation webhooks: every attempt it makes.
    cxr_web         the worklist: accounts, sessions, reading, the audit page; STOW-RS in
                    (the ingest core: studies, instances, conflicts, as the listener).

:data:`GRANTS` is the whole policy, one entry per role and table (an empty set: nothing).
:func:`apply` makes a database match it: creates the roles (cluster-wide, so safe when
several databases share one Postgres), then ``REVOKE ALL`` and ``GRANT`` per table, and
``USAGE`` on the sequences of the tables a role inserts into. ``cxr-triage migrate``
runs it after every upgrade, so tables added by later migrations are covered as soon as
they are in the map (a unit test checks that every table of ``cxr_db.schema`` is).

``audit_log`` is append-only for every runtime role: ``INSERT`` (with ``SELECT`` on its
``id`` column alone, which ``INSERT ... RETURNING id`` needs), plus ``SELECT`` for the
web's audit page; no role but the owner may ``UPDATE``/``DELETE``/``TRUNCATE`` it (its
triggers refuse those too) or ``ALTER`` it (only an owner may). No runtime role is a
superuser, may create roles or databases, or owns a table, so ``COPY ... TO PROGRAM``
and ``ALTER TABLE audit_log DISABLE TRIGGER`` are refused to all of them.

A row lock (``SELECT ... FOR UPDATE``, the leases' ``SKIP LOCKED``) needs ``UPDATE``; a
trigger runs with the privileges of the role whose statement fired it (``instances``'
arrival trigger updates ``studies``). When the migrating user may not create roles
(neither superuser nor ``CREATEROLE``) nothing is changed: every process then runs as
that one user (the single-URL development setup).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

#: The process kinds, as ``cxr_triage.processes.ROLES`` names them.
KINDS: Final = ("listener", "scheduler", "worker", "results", "web")
ROLE_PREFIX: Final = "cxr_"
#: Serialises ``apply`` with migrations on one database (the lock ``migrations/env.py`` takes).
MIGRATION_LOCK: Final = 74210731

SEL, INS, UPD, DEL = "SELECT", "INSERT", "UPDATE", "DELETE"
NOTHING: Final[frozenset[str]] = frozenset()
#: ``INSERT ... RETURNING id`` (every audit append) needs SELECT on the returned column:
#: the id alone, never the entries' contents.
RETURNING_ID: Final = "SELECT (id)"


def _p(*privileges: str) -> frozenset[str]:
    return frozenset(privileges)


#: {kind: {table: privileges}}: every table of the schema for every role, even as NOTHING.
GRANTS: Final[Mapping[str, Mapping[str, frozenset[str]]]] = {
    "listener": {
        # ingest: upsert the study, insert or update the instance (the arrival trigger
        # updates the study), lock it while enqueuing, record a conflicting resend
        "studies": _p(SEL, INS, UPD),
        "instances": _p(SEL, INS, UPD),
        "instance_conflicts": _p(SEL, INS),
        "predictions": NOTHING,
        "result_sends": NOTHING,
        "models": NOTHING,
        "population_strata": NOTHING,
        "users": NOTHING,
        "web_sessions": NOTHING,
        "api_tokens": NOTHING,
        "audit_log": NOTHING,
        "study_reads": NOTHING,
        "answers": NOTHING,
        "escalations": NOTHING,
        "escalation_deliveries": NOTHING,
        "escalation_attempts": NOTHING,
        "hl7_sends": NOTHING,
        "sign_in_locks": NOTHING,
    },
    "scheduler": {
        # reconciler (re-enqueue), completeness (studies' result state), escalation of
        # flagged studies left unread (writes the outbox rows the results sender delivers)
        "studies": _p(SEL, UPD),
        "instances": _p(SEL, UPD),
        "instance_conflicts": NOTHING,
        "predictions": _p(SEL),
        "result_sends": NOTHING,
        "models": _p(SEL),
        "population_strata": NOTHING,
        "users": NOTHING,
        "web_sessions": NOTHING,
        "api_tokens": NOTHING,
        "audit_log": _p(INS, RETURNING_ID),
        "study_reads": _p(SEL),
        "answers": _p(SEL),
        "escalations": _p(SEL, INS, UPD),
        "escalation_deliveries": _p(SEL, INS, UPD),
        "escalation_attempts": NOTHING,
        "hl7_sends": NOTHING,
        "sign_in_locks": NOTHING,
    },
    "worker": {
        # claim under a lease, record the outcome and the prediction (a triaging one raises
        # its study's flag and score); the registry is read (``cxr-triage migrate``
        # registers the configured model)
        "studies": _p(SEL, UPD),
        "instances": _p(SEL, UPD),
        "instance_conflicts": NOTHING,
        "predictions": _p(SEL, INS, UPD),
        "result_sends": NOTHING,
        "models": _p(SEL),
        "population_strata": _p(SEL),
        "users": NOTHING,
        "web_sessions": NOTHING,
        "api_tokens": NOTHING,
        "audit_log": NOTHING,
        "study_reads": NOTHING,
        "answers": NOTHING,
        "escalations": NOTHING,
        "escalation_deliveries": NOTHING,
        "escalation_attempts": NOTHING,
        "hl7_sends": NOTHING,
        "sign_in_locks": NOTHING,
    },
    "results": {
        # a complete study's results: read it, record every send, move its result state;
        # deliver escalations: take due deliveries, record every attempt
        "studies": _p(SEL, UPD),
        "instances": _p(SEL),
        "instance_conflicts": NOTHING,
        "predictions": _p(SEL),
        "result_sends": _p(SEL, INS),
        "models": _p(SEL),
        "population_strata": _p(SEL),
        "users": NOTHING,
        "web_sessions": NOTHING,
        "api_tokens": NOTHING,
        "audit_log": _p(INS, RETURNING_ID),
        "study_reads": _p(SEL),
        "answers": _p(SEL),
        "escalations": _p(SEL),
        "escalation_deliveries": _p(SEL, UPD),
        "escalation_attempts": _p(SEL, INS),
        # every HL7 attempt to the RIS (cxr_sender.hl7)
        "hl7_sends": _p(SEL, INS),
        "sign_in_locks": NOTHING,
    },
    "web": {
        # sign-in, sessions and tokens; claim, release and answer; the audit page;
        # everything a study page shows is read-only. STOW-RS ingests in the web process
        # through the ingest core: it needs the listener's rights on studies, instances
        # and conflicts (a deployment without STOW-RS senders may revoke them).
        "studies": _p(SEL, INS, UPD),
        "instances": _p(SEL, INS, UPD),
        "instance_conflicts": _p(SEL, INS),
        "predictions": _p(SEL),
        "result_sends": _p(SEL),
        "models": _p(SEL),
        "population_strata": _p(SEL),
        "users": _p(SEL, UPD),
        "web_sessions": _p(SEL, INS, UPD, DEL),
        "api_tokens": _p(SEL, UPD),
        "audit_log": _p(SEL, INS),
        "study_reads": _p(SEL, INS, UPD),
        "answers": _p(SEL, INS),
        "escalations": _p(SEL),
        "escalation_deliveries": _p(SEL),
        "escalation_attempts": _p(SEL),
        "hl7_sends": _p(SEL),
        # sign-in lock-outs per (account, client address): set, read, lift
        "sign_in_locks": _p(SEL, INS, UPD, DEL),
    },
}


def role_name(kind: str) -> str:
    """The Postgres role of a process kind (``listener`` -> ``cxr_listener``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown process kind {kind!r}; one of {', '.join(KINDS)}")
    return f"{ROLE_PREFIX}{kind}"


def role_url(url: str, kind: str, password: str | None) -> str:
    """``url`` (the owner's) with the user and password of ``kind``'s role: same host,
    port, database and options."""
    owner = make_url(url)
    parsed = URL.create(
        owner.drivername,
        username=role_name(kind),
        password=password or None,  # never the owner's
        host=owner.host,
        port=owner.port,
        database=owner.database,
        query=owner.query,
    )
    return parsed.render_as_string(hide_password=False)


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def can_manage_roles(conn: Connection) -> bool:
    """True when the connected user may create roles (superuser or ``CREATEROLE``)."""
    row = conn.execute(
        text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    ).scalar()
    return bool(row)


def is_superuser(conn: Connection) -> bool:
    return bool(
        conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
    )


_ROLE_OPTIONS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"


def ensure_roles(conn: Connection, passwords: Mapping[str, str] | None = None) -> None:
    """Create each runtime role if missing (another database on the cluster may have
    created it a moment ago: that is fine), make sure none carries more than LOGIN, and
    set the passwords given (kind -> password)."""
    passwords = passwords or {}
    for kind in KINDS:
        name = role_name(kind)
        conn.execute(
            text(
                f"""DO $$ BEGIN
                    CREATE ROLE {name} {_ROLE_OPTIONS};
                EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                END $$"""
            )
        )
        wider = conn.execute(
            text(
                "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication "
                "OR rolbypassrls OR rolinherit OR NOT rolcanlogin FROM pg_roles "
                "WHERE rolname = :name"
            ),
            {"name": name},
        ).scalar()
        if wider:
            log.warning("role %s had more than LOGIN; resetting its attributes", name)
            conn.execute(text(f"ALTER ROLE {name} {_ROLE_OPTIONS}"))
        member_of = conn.execute(
            text(
                "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = :name"
            ),
            {"name": name},
        ).scalars()
        for group in list(member_of):
            log.warning("role %s was a member of %s; revoking that", name, group)
            conn.execute(text(f'REVOKE "{group}" FROM {name}'))
        password = passwords.get(kind)
        if password:
            conn.execute(text(f"ALTER ROLE {name} PASSWORD {_quote_literal(password)}"))


def _table_sequences(conn: Connection, table: str) -> list[str]:
    """The sequences owned by ``table``'s columns (serial and identity ids)."""
    rows = conn.execute(
        text(
            "SELECT s.relname FROM pg_class s "
            "JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass "
            "JOIN pg_class t ON t.oid = d.refobjid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i') "
            "AND n.nspname = current_schema() AND t.relname = :table"
        ),
        {"table": table},
    ).scalars()
    return list(rows)


def _existing_tables(conn: Connection) -> set[str]:
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        )
    ).scalars()
    return set(rows)


def _try(conn: Connection, statement: str) -> bool:
    """Run a statement only a schema or database owner may run; skip it otherwise."""
    from sqlalchemy.exc import ProgrammingError

    try:
        with conn.begin_nested():
            conn.execute(text(statement))
    except ProgrammingError:
        log.info("skipped (not permitted to this user): %s", statement)
        return False
    return True


def apply_grants(conn: Connection) -> None:
    """Revoke everything from each runtime role, then grant what :data:`GRANTS` says.
    Tables of the map not (yet) in the database are skipped; tables in the database but
    not in the map (``alembic_version``) get nothing."""
    database = conn.execute(text("SELECT current_database()")).scalar_one()
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    # PUBLIC: no temp tables or new objects for anyone the grants below do not name
    _try(conn, f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
    _try(conn, f'REVOKE CREATE ON SCHEMA "{schema}" FROM PUBLIC')
    _try(conn, f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM PUBLIC')
    _try(conn, f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA "{schema}" FROM PUBLIC')
    tables = _existing_tables(conn)
    for kind in KINDS:
        name = role_name(kind)
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO {name}'))
        conn.execute(text(f'REVOKE TEMPORARY, CREATE ON DATABASE "{database}" FROM {name}'))
        conn.execute(text(f'REVOKE CREATE ON SCHEMA "{schema}" FROM {name}'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO {name}'))
        conn.execute(text(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {name}'))
        conn.execute(text(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA "{schema}" FROM {name}'))
        for table, privileges in sorted(GRANTS[kind].items()):
            if not privileges or table not in tables:
                continue
            conn.execute(text(f'GRANT {", ".join(sorted(privileges))} ON "{table}" TO {name}'))
            if INS in privileges:  # serial ids: nextval
                for sequence in _table_sequences(conn, table):
                    conn.execute(text(f'GRANT USAGE ON SEQUENCE "{sequence}" TO {name}'))


def apply(conn: Connection, passwords: Mapping[str, str] | None = None) -> bool:
    """Create the roles and bring their grants in line with :data:`GRANTS`, in the
    caller's transaction. Returns False (and changes nothing) when the connected user
    may not create roles: every process then runs as that user."""
    if not can_manage_roles(conn):
        log.info(
            "the migrating user may not create roles: no per-process roles; every "
            "process runs as the user of CXR_DATABASE_URL"
        )
        return False
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    ensure_roles(conn, passwords)
    apply_grants(conn)
    return True


def table_level(privileges: frozenset[str]) -> frozenset[str]:
    """``privileges`` without the column-level ones (``SELECT (id)``)."""
    return frozenset(p for p in privileges if "(" not in p)


def privileges_of(conn: Connection, kind: str) -> dict[str, frozenset[str]]:
    """What ``kind``'s role holds now on each table of the schema, table-level (for checks
    and tests; column privileges: ``has_column_privilege``)."""
    rows = conn.execute(
        text(
            "SELECT c.relname, a.privilege_type FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN LATERAL aclexplode(c.relacl) a "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            "AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = :name)"
        ),
        {"name": role_name(kind)},
    ).all()
    out: dict[str, set[str]] = {}
    for table, privilege in rows:
        out.setdefault(table, set()).add(privilege)
    return {table: frozenset(p) for table, p in out.items()}
