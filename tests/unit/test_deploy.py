"""docker-compose.yml describes what ops need: healthchecks, ordering, secrets, GPU, scaling."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers import requires_peer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "listener", "scheduler", "worker", "results", "web"):
        assert "healthcheck" in compose["services"][name], name


def test_start_order_waits_for_health_and_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("listener", "scheduler", "worker", "results", "web"):
        cond = services[name]["depends_on"]["migrate"]["condition"]
        assert cond == "service_completed_successfully"


def test_worker_scales_and_reserves_a_gpu(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker  # a fixed name would break --scale worker=N
    assert "ports" not in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_secrets_are_required_not_defaulted() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text


def test_listener_and_workers_share_the_instance_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert any(v.startswith("instances:") for v in services["listener"]["volumes"])
    assert any(v.startswith("instances:") for v in services["worker"]["volumes"])


def test_results_service_reads_instances_and_shares_the_uid_root(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    results = services["results"]
    assert results["command"] == ["send-results"]
    assert "healthcheck" in results
    assert results["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "instances:/data/instances:ro" in results["volumes"]
    # the generated UID root (CXR_DATA_DIR/uid-root) is the same file for both
    assert "state:/data" in results["volumes"]
    assert "state:/data" in services["listener"]["volumes"]
    assert "CXR_RESULT_DESTINATIONS" in results["environment"]


@requires_peer("docker-compose")
def test_docker_compose_validates_the_file() -> None:
    env = dict(os.environ, POSTGRES_PASSWORD="test-only")
    ok = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    env.pop("POSTGRES_PASSWORD")
    missing = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD" in missing.stderr


def test_up_and_compose_start_the_same_roles(compose: dict[str, Any]) -> None:
    from cxr_triage.processes import ROLES

    ours = {
        name: tuple(service["command"])
        for name, service in compose["services"].items()
        if service.get("image") == "cxr-triage:latest" and service.get("restart") != "no"
    }
    assert ours == {role.name: role.command for role in ROLES}
    for role in ROLES:  # each long-running role says when it is healthy
        assert "healthcheck" in compose["services"][role.name], role.name
