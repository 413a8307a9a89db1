"""The grant map of ``cxr_db.roles`` covers the whole schema for every process role (issue 20)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from cxr_db import roles
from cxr_db.schema import Base
from cxr_triage.processes import ROLES
from cxr_triage.services import ROLE_PASSWORDS_FILE, embedded_role_passwords

KNOWN = {"SELECT", "INSERT", "UPDATE", "DELETE", roles.RETURNING_ID}


def test_every_process_kind_has_a_role_and_nothing_else() -> None:
    assert set(roles.KINDS) == {role.name for role in ROLES}
    assert set(roles.GRANTS) == set(roles.KINDS)


@pytest.mark.parametrize("kind", roles.KINDS)
def test_every_table_of_the_schema_is_in_the_map_for_every_role(kind: str) -> None:
    tables = set(Base.metadata.tables)
    named = set(roles.GRANTS[kind])
    assert tables - named == set(), f"{kind}: add these tables to cxr_db.roles.GRANTS"
    assert named - tables == set(), f"{kind}: the map names tables the schema has not"
    for table, privileges in roles.GRANTS[kind].items():
        assert privileges <= KNOWN, (kind, table, privileges)
        if roles.RETURNING_ID in privileges:  # the id of what it inserts, nothing else
            assert "INSERT" in privileges, (kind, table)
            assert "SELECT" not in privileges, (kind, table)


def test_the_audit_log_is_append_only_for_every_role() -> None:
    for kind in roles.KINDS:
        assert roles.GRANTS[kind]["audit_log"] <= {"INSERT", "SELECT", roles.RETURNING_ID}, kind
    # only the web shows the audit log
    readers = {k for k in roles.KINDS if "SELECT" in roles.GRANTS[k]["audit_log"]}
    assert readers == {"web"}


def test_only_the_web_sees_accounts_and_no_runtime_role_deletes_clinical_rows() -> None:
    for kind in roles.KINDS:
        for table in ("users", "web_sessions", "api_tokens"):
            if kind != "web":
                assert roles.GRANTS[kind][table] == roles.NOTHING, (kind, table)
        for table in ("studies", "instances", "predictions", "answers", "result_sends"):
            assert "DELETE" not in roles.GRANTS[kind][table], (kind, table)


def test_role_url_keeps_host_database_and_options() -> None:
    url = "postgresql+psycopg://owner:secret@db.example:6543/cxr?sslmode=require"
    out = make_url(roles.role_url(url, "web", "p@ss/word"))
    assert (out.username, out.password) == ("cxr_web", "p@ss/word")
    assert (out.host, out.port, out.database) == ("db.example", 6543, "cxr")
    assert out.query == {"sslmode": "require"}
    assert make_url(roles.role_url(url, "worker", None)).password is None
    with pytest.raises(ValueError, match="unknown process kind"):
        roles.role_name("admin")


def test_embedded_passwords_are_generated_once_and_private(tmp_path: Path) -> None:
    first = embedded_role_passwords(tmp_path)
    assert set(first) == set(roles.KINDS)
    assert len(set(first.values())) == len(roles.KINDS)
    assert all(len(p) >= 24 for p in first.values())
    path = tmp_path / ROLE_PASSWORDS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert embedded_role_passwords(tmp_path) == first
    assert json.loads(path.read_text()) == first
    path.write_text("{not json")  # a damaged file: new passwords, set at the next migrate
    again = embedded_role_passwords(tmp_path)
    assert set(again) == set(roles.KINDS)
    assert again != first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_role_passwords_come_from_the_environment_and_name_each_process_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cxr_common.settings import CommonSettings
    from cxr_triage.services import ResolvedServices

    monkeypatch.setenv("CXR_DB_WEB_PASSWORD", "web-secret")
    monkeypatch.setenv("CXR_DB_WORKER_PASSWORD", "  ")  # empty: unset
    assert CommonSettings().role_passwords() == {"web": "web-secret"}

    owner = "postgresql+psycopg://cxr:owner-secret@db:5432/cxr"
    resolved = ResolvedServices(owner, "redis://r", None, {"web": "web-secret"})
    resolved.prepare(migrate=False)
    web = make_url(resolved.database_url_for("web"))
    assert (web.username, web.password, web.host) == ("cxr_web", "web-secret", "db")
    assert resolved.database_url_for("worker") == owner  # no password for it: the owner's
    assert resolved.database_url_for(None) == owner  # admin commands
    env = resolved.child_env({"CXR_DB_WORKER_PASSWORD": "w", "PATH": "/bin"}, "web")
    assert "owner-secret" not in env["CXR_DATABASE_URL"]
    # a child knows its own password (in its URL) and no other role's
    assert "CXR_DB_WORKER_PASSWORD" not in env
    assert env["PATH"] == "/bin"
    single = ResolvedServices(owner, "redis://r", None, {})
    single.prepare(migrate=False)  # one URL, no role passwords: everyone is the owner
    assert {single.database_url_for(k) for k in roles.KINDS} == {owner}


def test_certificate_binding_reads_json_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cxr_common.settings import ListenerSettings

    for name in ("cert", "key", "ca"):
        (tmp_path / name).write_text("x")
    monkeypatch.setenv("CXR_DICOM_TLS_CERT", str(tmp_path / "cert"))
    monkeypatch.setenv("CXR_DICOM_TLS_KEY", str(tmp_path / "key"))
    monkeypatch.setenv("CXR_DICOM_TLS_CA", str(tmp_path / "ca"))
    monkeypatch.setenv("CXR_DICOM_TLS_CLIENT_AE_TITLES", '{"ct1.example.org": ["CT1", "CT1B"]}')
    assert ListenerSettings().dicom_tls_client_ae_titles == {"ct1.example.org": ["CT1", "CT1B"]}
