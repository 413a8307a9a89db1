"""docker-compose.yml describes what ops need: healthchecks, ordering, secrets, GPU, scaling."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose_native import example_variables
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


REQUIRED = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "CXR_DB_LISTENER_PASSWORD",
    "CXR_DB_SCHEDULER_PASSWORD",
    "CXR_DB_WORKER_PASSWORD",
    "CXR_DB_RESULTS_PASSWORD",
    "CXR_DB_WEB_PASSWORD",
    "CXR_ALLOWED_CALLING_AE_TITLES",
    "CXR_ALLOWED_PEER_NETWORKS",
    "CXR_DICOM_BIND_ADDRESS",
)


def test_secrets_are_required_not_defaulted() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    for name in REQUIRED:
        assert "${" + name + ":?" in text, name
        assert "${" + name + ":-" not in text, name
    example = example_variables()
    assert set(REQUIRED) <= set(example), "document every required value in .env.example"


def test_each_process_connects_as_its_own_database_role(compose: dict[str, Any]) -> None:
    from cxr_db.roles import KINDS, role_name

    services = compose["services"]
    migrate = services["migrate"]["environment"]
    assert migrate["CXR_DATABASE_URL"].startswith("postgresql+psycopg://cxr:")
    for kind in KINDS:
        assert f"CXR_DB_{kind.upper()}_PASSWORD" in migrate, kind
        url = services[kind]["environment"]["CXR_DATABASE_URL"]
        assert url.startswith(f"postgresql+psycopg://{role_name(kind)}:"), kind
        assert "POSTGRES_PASSWORD" not in url, kind
    broker = services["listener"]["environment"]["CXR_BROKER_URL"]
    assert broker.startswith("redis://:${REDIS_PASSWORD:?")
    assert "REDISCLI_AUTH" in services["redis"]["environment"]
    assert "requirepass" in " ".join(services["redis"]["command"])


def test_services_run_read_only_without_new_privileges_and_with_memory_limits(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("mem_limit"), name
        assert "/tmp" in service.get("tmpfs", []), name


def test_listener_is_production_with_allow_lists_and_not_on_every_interface(
    compose: dict[str, Any],
) -> None:
    listener = compose["services"]["listener"]
    env = listener["environment"]
    assert env["CXR_ENVIRONMENT"].startswith("${CXR_ENVIRONMENT:-production}")
    assert env["CXR_ALLOWED_CALLING_AE_TITLES"].startswith("${CXR_ALLOWED_CALLING_AE_TITLES:?")
    assert env["CXR_ALLOWED_PEER_NETWORKS"].startswith("${CXR_ALLOWED_PEER_NETWORKS:?")
    assert listener["ports"] == [
        "${CXR_DICOM_BIND_ADDRESS:?set the host address to publish the DICOM port on}"
        ":${CXR_DICOM_PORT:-11112}:11112"
    ]
    assert any(v.endswith(":/tls:ro") for v in listener["volumes"])
    for name in ("CXR_DICOM_TLS_CERT", "CXR_DICOM_TLS_KEY", "CXR_DICOM_TLS_CA"):
        assert name in env
    web_ports = compose["services"]["web"]["ports"]
    assert all(p.startswith("127.0.0.1:") for p in web_ports)


def test_third_party_images_are_pinned(compose: dict[str, Any]) -> None:
    for name in ("postgres", "redis"):
        image = compose["services"][name]["image"]
        repo, _, tag = image.partition(":")
        # a full version (16.4, 7.4.1), never a moving major tag or latest
        assert tag.count(".") >= 1, image
        assert tag != "latest", image


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


def _compose_config(env: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    args = [arg for f in files for arg in ("-f", f)]
    return subprocess.run(
        ["docker-compose", *args, "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@requires_peer("docker-compose")
def test_docker_compose_validates_the_file() -> None:
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    env.update(example_variables())
    ok = _compose_config(env, "docker-compose.yml")
    assert ok.returncode == 0, ok.stderr
    dev = _compose_config(env, "docker-compose.yml", "docker-compose.dev.yml")
    assert dev.returncode == 0, dev.stderr
    for name in REQUIRED:  # each required value: compose refuses without it
        missing = _compose_config({k: v for k, v in env.items() if k != name}, "docker-compose.yml")
        assert missing.returncode != 0, name
        assert name in missing.stderr, name


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
