"""Least privilege in Postgres (issue 20): each process role holds exactly what
``cxr_db.roles.GRANTS`` says, and what it must not do is refused by Postgres itself.

Each check connects as the role (``Services.role_url``), as the processes do; the
processes' own integration tests (listener, worker, web, results, scheduler) run
connected as their roles too (``tests/conftest.py``), which shows each can do its work.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from cxr_common.settings import CommonSettings
from cxr_db import roles
from cxr_triage.services import warn_if_superuser
from tests.conftest import Services

pytestmark = pytest.mark.integration

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


@pytest.fixture(scope="module")
def role_engines(services: Services) -> Iterator[dict[str, Engine]]:
    if not services.roles:
        pytest.fail("the migration created no roles (CXR_TEST_DB_ROLES=0 or not a superuser)")
    engines = {
        kind: create_engine(services.role_url(kind), poolclass=pool.NullPool)
        for kind in roles.KINDS
    }
    yield engines
    for engine in engines.values():
        engine.dispose()


INSUFFICIENT_PRIVILEGE = "42501"


def _refused(engine: Engine, statement: str) -> str:
    """Run ``statement`` as the engine's role; Postgres must refuse it for want of a
    privilege (SQLSTATE 42501: "permission denied", "must be owner", "must be
    superuser"); its message."""
    with engine.connect() as conn, pytest.raises(ProgrammingError) as caught:
        conn.execute(text(statement))
    orig = caught.value.orig
    assert getattr(orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE, (statement, str(orig))
    return str(orig)


def test_each_role_holds_exactly_its_grants(services: Services, engine: Engine) -> None:
    with engine.connect() as conn:
        for kind in roles.KINDS:
            name = roles.role_name(kind)
            for table, wanted in roles.GRANTS[kind].items():
                held = {
                    p
                    for p in TABLE_PRIVILEGES
                    if conn.execute(
                        text("SELECT has_table_privilege(:r, :t, :p)"),
                        {"r": name, "t": table, "p": p},
                    ).scalar()
                }
                assert held == set(roles.table_level(wanted)), (kind, table, held)
                for column_privilege in wanted - roles.table_level(wanted):
                    privilege, _, column = column_privilege.partition(" ")
                    assert conn.execute(
                        text("SELECT has_column_privilege(:r, :t, :c, :p)"),
                        {"r": name, "t": table, "c": column.strip("()"), "p": privilege},
                    ).scalar(), (kind, table, column_privilege)
            # alembic_version is in no map: nobody may touch it
            assert not conn.execute(
                text("SELECT has_table_privilege(:r, 'alembic_version', 'SELECT')"), {"r": name}
            ).scalar()
            attributes = conn.execute(
                text(
                    "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, "
                    "rolcanlogin FROM pg_roles WHERE rolname = :r"
                ),
                {"r": name},
            ).one()
            assert tuple(attributes) == (False, False, False, False, False, True), kind
            owned = conn.execute(
                text(
                    "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                    "WHERE r.rolname = :r"
                ),
                {"r": name},
            ).scalar()
            assert owned == 0, f"{kind} owns {owned} relations"


def test_the_roles_connect_as_themselves(role_engines: dict[str, Engine]) -> None:
    for kind, engine in role_engines.items():
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == roles.role_name(kind)


def test_listener_cannot_read_accounts_or_change_the_audit_log(
    role_engines: dict[str, Engine],
) -> None:
    listener = role_engines["listener"]
    for statement in (
        "SELECT * FROM users",
        "SELECT * FROM web_sessions",
        "SELECT * FROM api_tokens",
        "SELECT * FROM audit_log",
        "UPDATE audit_log SET action = action",
        "INSERT INTO audit_log (actor, actor_kind, action) VALUES ('x', 'cli', 'x')",
        "SELECT * FROM predictions",
        "DELETE FROM instances",
    ):
        assert "permission denied" in _refused(listener, statement), statement


def test_worker_cannot_delete_instances_or_touch_accounts(
    role_engines: dict[str, Engine],
) -> None:
    worker = role_engines["worker"]
    for statement in (
        "DELETE FROM instances",
        "DELETE FROM predictions",
        "INSERT INTO studies (study_instance_uid) VALUES ('1.2.3')",
        "UPDATE models SET state = state",
        "SELECT * FROM users",
        "SELECT * FROM answers",
    ):
        assert "permission denied" in _refused(worker, statement), statement


@pytest.mark.parametrize("kind", ["scheduler", "results"])
def test_audit_writers_append_but_cannot_read_the_entries(
    role_engines: dict[str, Engine], kind: str
) -> None:
    engine = role_engines[kind]
    with engine.connect() as conn:  # what audit.append does: INSERT ... RETURNING id
        new_id = conn.execute(
            text(
                "INSERT INTO audit_log (actor, actor_kind, action) "
                "VALUES ('roles-test', 'system', 'escalation') RETURNING id"
            )
        ).scalar_one()
        conn.rollback()  # the log is append-only: leave no test row in it
    assert new_id > 0
    for statement in (
        "SELECT actor, action, detail FROM audit_log",
        "SELECT * FROM audit_log",
        "UPDATE audit_log SET actor = 'x'",
        "DELETE FROM audit_log",
    ):
        assert "permission denied" in _refused(engine, statement), (kind, statement)


def test_web_cannot_drop_or_rewrite_history(role_engines: dict[str, Engine]) -> None:
    web = role_engines["web"]
    for statement, answer in (
        ("DROP TABLE studies", "must be owner"),
        ("DROP TABLE audit_log", "must be owner"),
        ("DELETE FROM audit_log", "permission denied"),
        ("UPDATE audit_log SET action = action", "permission denied"),
        ("DELETE FROM answers", "permission denied"),
        ("UPDATE answers SET finding = finding", "permission denied"),
        ("UPDATE predictions SET id = id", "permission denied"),
        ("DELETE FROM users", "permission denied"),
        ("INSERT INTO users (username) VALUES ('mallory')", "permission denied"),
    ):
        assert answer in _refused(web, statement), statement
    with web.connect() as conn:  # what its admin page does: read the audit log
        conn.execute(text("SELECT count(*) FROM audit_log")).scalar()


@pytest.mark.parametrize("kind", roles.KINDS)
def test_no_role_can_escape_the_database_or_alter_the_audit_log(
    role_engines: dict[str, Engine], kind: str
) -> None:
    engine = role_engines[kind]
    for statement, answer in (
        ("COPY (SELECT 1) TO PROGRAM 'true'", "pg_execute_server_program"),
        ("COPY (SELECT 1) TO '/tmp/cxr-copy'", "pg_write_server_files"),
        ("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only", "must be owner"),
        ("ALTER TABLE audit_log DISABLE TRIGGER ALL", "must be owner"),
        ("TRUNCATE audit_log", "permission denied"),
        ("TRUNCATE instances", "permission denied"),
        ("CREATE TABLE stash (x int)", "permission denied"),
        ("CREATE TEMP TABLE stash (x int)", "permission denied"),
        ("CREATE ROLE mallory", "permission denied"),
        ("SELECT pg_read_file('/etc/passwd')", "permission denied"),
        ("SET ROLE postgres", "permission denied"),
    ):
        assert answer in _refused(engine, statement), (kind, statement)


def test_apply_is_idempotent_and_resets_a_widened_role(services: Services, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER ROLE cxr_results CREATEDB"))
        conn.execute(text("GRANT DELETE ON audit_log TO cxr_web"))
        conn.execute(text("GRANT ALL ON models TO cxr_worker"))
    with engine.begin() as conn:
        assert roles.apply(conn) is True
    with engine.begin() as conn:
        assert roles.apply(conn) is True  # a second run changes nothing and fails nothing
        for kind in roles.KINDS:
            assert roles.privileges_of(conn, kind) == {
                t: roles.table_level(p)
                for t, p in roles.GRANTS[kind].items()
                if roles.table_level(p)
            }, kind
        assert not conn.execute(
            text("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'cxr_results'")
        ).scalar()


def test_a_table_added_later_is_granted_only_when_the_map_names_it(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE later_table (id serial PRIMARY KEY)"))
        conn.execute(text("GRANT ALL ON later_table TO PUBLIC, cxr_listener"))
    try:
        with engine.begin() as conn:
            roles.apply(conn)
            for kind in roles.KINDS:
                assert not conn.execute(
                    text("SELECT has_table_privilege(:r, 'later_table', 'INSERT')"),
                    {"r": roles.role_name(kind)},
                ).scalar(), kind
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE later_table"))


def test_a_user_that_may_not_create_roles_changes_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE cxr_web"))
        assert roles.can_manage_roles(conn) is False
        assert roles.apply(conn) is False


def test_a_superuser_url_in_production_is_warned_about(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    owner = CommonSettings(database_url=services.database_url, environment="production")  # type: ignore[arg-type]
    role = CommonSettings(database_url=services.role_url("web"), environment="production")  # type: ignore[arg-type]
    development = CommonSettings(database_url=services.database_url)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="cxr_triage.services"):
        warn_if_superuser(role)
        warn_if_superuser(development)
        assert not caplog.records
        warn_if_superuser(owner)
    assert len(caplog.records) == 1
    assert "superuser" in caplog.records[0].getMessage()
    assert "production" in caplog.records[0].getMessage()


def test_downgrade_takes_this_databases_grants_and_upgrade_restores_them(
    services: Services,
) -> None:
    from alembic import command

    from cxr_common.settings import normalise_database_url
    from migrations import alembic_config, upgrade_to_head

    name = f"cxr_roles_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        normalise_database_url(services.database_url), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = str(
        make_url(normalise_database_url(services.database_url))
        .set(database=name)
        .render_as_string(hide_password=False)
    )
    scratch = create_engine(url, poolclass=pool.NullPool)

    def web_reads_users() -> bool:
        with scratch.connect() as conn:
            return bool(
                conn.execute(
                    text("SELECT has_table_privilege('cxr_web', 'users', 'SELECT')")
                ).scalar()
            )

    try:
        assert upgrade_to_head(url) is True
        assert web_reads_users()
        command.downgrade(alembic_config(url), "0018")
        assert not web_reads_users()
        assert upgrade_to_head(url) is True
        assert web_reads_users()
    finally:
        scratch.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
