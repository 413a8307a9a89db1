"""The audit log on real Postgres: append-only by Postgres itself, filters, paging, export."""

from __future__ import annotations

import argparse
import csv
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from cxr_db.audit import store as audit
from cxr_db.audit.store import Actor, AuditEvent, AuditQuery
from cxr_db.audit.tables import ActorKind, AuditAction
from cxr_triage import accounts_cli
from tests.integration.reading_rows import audit_after, audit_mark

pytestmark = pytest.mark.integration


def _actor(prefix: str = "u") -> Actor:
    """A user name no other test uses (the audit log is never emptied)."""
    return Actor(f"{prefix}{uuid.uuid4().hex[:12]}", ActorKind.USER, "192.0.2.10")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'someone else' WHERE id = :id",
        "UPDATE audit_log SET detail = '{}'::jsonb",
        "DELETE FROM audit_log WHERE id = :id",
        "DELETE FROM audit_log WHERE false",
        "TRUNCATE audit_log",
    ],
)
def test_postgres_refuses_to_change_or_remove_audit_entries(engine: Engine, statement: str) -> None:
    entry_id = audit.record(engine, AuditEvent(AuditAction.STUDY_VIEW, _actor(), "1.2.3"))
    with pytest.raises(DBAPIError, match="audit_log is append-only"), engine.begin() as conn:
        conn.execute(text(statement), {"id": entry_id})
    # Not even with triggers switched off for replication (superuser only).
    with engine.connect() as conn:
        conn.execute(text("SET session_replication_role = replica"))
        with pytest.raises(DBAPIError, match="audit_log is append-only"):
            conn.execute(text(statement), {"id": entry_id})
        conn.rollback()
        conn.execute(text("RESET session_replication_role"))
        conn.commit()
    (kept,) = [e for e in audit_after(engine, entry_id - 1) if e.id == entry_id]
    assert kept.action == "study_view"
    assert kept.target == "1.2.3"


def test_entries_keep_actor_time_address_target_and_scalar_detail(engine: Engine) -> None:
    actor = _actor()
    mark = audit_mark(engine)
    audit.record(
        engine,
        AuditEvent(
            AuditAction.HEATMAP_FETCH,
            actor,
            "1.2.3.4",
            {"sop_instance_uid": "1.2.3.4.1", "long": "x" * 500, "n": 3, "ok": True},
        ),
    )
    (entry,) = audit_after(engine, mark)
    assert (entry.actor, entry.actor_kind, entry.action, entry.target, entry.client_addr) == (
        actor.name,
        "user",
        "heatmap_fetch",
        "1.2.3.4",
        "192.0.2.10",
    )
    assert entry.detail["long"] == "x" * audit.MAX_DETAIL_STRING
    assert (entry.detail["n"], entry.detail["ok"]) == (3, True)
    assert entry.at.tzinfo is not None
    assert json.loads(json.dumps(entry.as_json()))["action"] == "heatmap_fetch"
    with pytest.raises(TypeError, match="JSON scalar"):
        audit.record(
            engine,
            AuditEvent(AuditAction.STUDY_VIEW, actor, None, {"nested": {"a": 1}}),  # type: ignore[dict-item]
        )
    with pytest.raises(TypeError, match="AuditAction"):
        audit.record(engine, AuditEvent("study_view", actor))  # type: ignore[arg-type]
    assert len(audit_after(engine, mark)) == 1


def test_filters_by_actor_action_target_and_time(engine: Engine) -> None:
    alice, bob = _actor("alice"), _actor("bob")
    first = audit.record(engine, AuditEvent(AuditAction.STUDY_VIEW, alice, "1.1"))
    audit.record(engine, AuditEvent(AuditAction.HEATMAP_FETCH, alice, "1.1"))
    audit.record(engine, AuditEvent(AuditAction.STUDY_VIEW, bob, "1.2"))
    last = audit.record(engine, AuditEvent(AuditAction.ANSWER, bob, "1.1"))
    mine = audit_after(engine, first - 1)
    at = {e.id: e.at for e in mine}

    def ids(**kw: object) -> list[int]:
        page = audit.list_entries(engine, AuditQuery(**kw))  # type: ignore[arg-type]
        return [e.id for e in page.entries if first <= e.id <= last]

    assert ids(actor=alice.name) == [first + 1, first]
    assert ids(actor=bob.name, action=AuditAction.STUDY_VIEW) == [first + 2]
    assert ids(target="1.1", since=at[first]) == [last, first + 1, first]
    assert ids(actor=bob.name, until=at[last]) == [first + 2]
    assert ids(actor=alice.name, since=at[first + 1]) == [first + 1]
    assert audit.count_entries(engine, AuditQuery(actor=bob.name)) == 2


def test_paging_walks_every_entry_once_newest_first(engine: Engine) -> None:
    actor = _actor("pager")
    written = [
        audit.record(engine, AuditEvent(AuditAction.STUDY_VIEW, actor, f"1.9.{i}"))
        for i in range(23)
    ]
    seen: list[int] = []
    before: int | None = None
    pages = 0
    while True:
        page = audit.list_entries(engine, AuditQuery(actor=actor.name, limit=10, before_id=before))
        seen.extend(e.id for e in page.entries)
        pages += 1
        if page.next_before_id is None:
            break
        before = page.next_before_id
    assert pages == 3
    assert seen == sorted(written, reverse=True)


def test_audit_export_writes_csv_and_is_itself_audited(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    actor = _actor("exp")
    for uid in ("1.5.1", "1.5.2"):
        audit.record(engine, AuditEvent(AuditAction.STUDY_VIEW, actor, uid, {"instances": 2}))
    audit.record(engine, AuditEvent(AuditAction.SIGN_OUT, actor, actor.name))
    out = tmp_path / "audit.csv"

    parser = argparse.ArgumentParser()
    accounts_cli.add_arguments(
        parser.add_subparsers(dest="command"), run=lambda handler, args: handler(engine, args)
    )
    args = parser.parse_args(
        ["audit", "export", "--out", str(out), "--actor", actor.name, "--action", "study_view"]
    )
    mark = audit_mark(engine)
    assert args.func(args) == 0
    assert f"2 audit entries written to {out}" in capsys.readouterr().out
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == audit.CSV_COLUMNS
    assert [(r["actor"], r["action"], r["target"]) for r in rows] == [
        (actor.name, "study_view", "1.5.1"),
        (actor.name, "study_view", "1.5.2"),
    ]
    assert json.loads(rows[0]["detail"]) == {"instances": 2}
    assert rows[0]["client_addr"] == "192.0.2.10"
    (entry,) = audit_after(engine, mark)
    assert entry.action == "audit_export"
    assert entry.actor_kind == "cli"
    assert entry.detail == {"entries": 2}
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind

    bad = parser.parse_args(["audit", "export", "--out", str(tmp_path / "missing" / "a.csv")])
    with pytest.raises(Exception, match="does not exist"):
        bad.func(bad)
    with pytest.raises(SystemExit):
        parser.parse_args(["audit", "export", "--out", str(out), "--since", "yesterday"])
