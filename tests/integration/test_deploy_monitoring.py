"""``deploy/prometheus/alerts.yml`` and ``deploy/grafana/cxr-triage.json`` name only metrics
that exist: every ``cxr_*`` name their expressions use is in a real scrape of the web app's
``/metrics`` (over HTTP, real Postgres and Redis), as a sample or as a family's sample name
(``_total``, ``_bucket``/``_sum``/``_count``, ``_info``) when the family has no sample yet."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from cxr_db.accounts.tables import Role
from tests.conftest import REPO, Services
from tests.web_server import add_token, reset_accounts, seed_worklist, serve, web_config

pytestmark = pytest.mark.integration

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "cxr-triage.json"
METRIC = re.compile(r"\bcxr_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
    "summary": ("_sum", "_count", "_created"),
}
#: What the alert rules must cover (issue 19).
REQUIRED_ALERTS = {
    "CxrFlaggedStudyUnread": "cxr_flagged_unread_oldest_seconds",
    "CxrUnscoredStudyTooOld": "cxr_unscored_oldest_seconds",
    "CxrNoWorkerScoring": "cxr_worker_last_prediction_age_seconds",
    "CxrWorkerHeartbeatStale": "cxr_worker_last_prediction_age_seconds",
    "CxrResultsFailing": "cxr_result_sends_total",
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alert_exprs() -> dict[str, str]:
    return {f"alert {r['alert']}": str(r["expr"]) for r in _rules()}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows
    return found


def _dashboard_exprs() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        f"panel {p['title']!r} {t['refId']}": str(t["expr"])
        for p in _panels(dashboard)
        for t in p.get("targets", [])
    }


def _exported(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_alert_rules_are_complete_and_described() -> None:
    rules = _rules()
    by_name = {r["alert"]: r for r in rules}
    assert len(by_name) == len(rules), "alert names are unique"
    for name, metric in REQUIRED_ALERTS.items():
        assert metric in str(by_name[name]["expr"]), name
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        expr = str(rule["expr"])
        assert expr.count("(") == expr.count(")"), rule["alert"]
        assert METRIC.search(expr), rule["alert"]


def test_dashboard_is_grafana_json_with_unique_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "cxr-triage"
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    used = {name for expr in exprs.values() for name in METRIC.findall(expr)}
    for headline in ("cxr_time_to_read_seconds_bucket", "cxr_flagged_unread_oldest_seconds"):
        assert headline in used


def test_every_metric_the_alerts_and_dashboard_name_is_exported(
    engine: Engine, services: Services, tmp_path: Path
) -> None:
    db = reset_accounts(engine)
    seed_worklist(db, tmp_path / "instances")
    token = add_token(db, "prometheus", Role.OPS)
    with serve(db, web_config(broker_url=services.broker_url)) as url:
        resp = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    exported = _exported(resp.text)
    missing = {
        f"{where}: {name}"
        for where, expr in {**_alert_exprs(), **_dashboard_exprs()}.items()
        for name in METRIC.findall(expr)
        if name not in exported
    }
    assert not missing, sorted(missing)
