"""What docker-compose.yml runs, run natively (issue 17): every service of the image
starts with the command and environment compose gives it, and each passes its own
``healthcheck``; then each stops cleanly on SIGTERM. The one-shot ``migrate`` runs to
completion first, as ``depends_on: service_completed_successfully`` orders it. Postgres
and Redis are the test's own (``services``); their healthchecks run against them.

This is the test that keeps compose honest where no Docker engine runs: a service whose
healthcheck can never pass (the results sender's heartbeat, issue 17) fails it."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.compose_native import (
    Adapter,
    NativeService,
    example_variables,
    load_compose,
    native_services,
    one_shot,
)
from tests.conftest import Services
from tests.faults import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Worst case for every service to pass: the worker loads the model on a busy machine.
HEALTHY_WITHIN_S = 240
CHECK_EVERY_S = 1.0


def _backing_checks(services: Services) -> dict[str, list[str]]:
    """The postgres and redis services' own checks, pointed at the test's servers."""
    db = urlparse(services.database_url.replace("+psycopg", ""))
    broker = urlparse(services.broker_url)
    return {
        "postgres": ["pg_isready", "-h", db.hostname or "", "-p", str(db.port or 5432)],
        "redis": ["redis-cli", "-h", broker.hostname or "", "-p", str(broker.port or 6379), "ping"],
    }


def _connected_users(services: Services) -> set[str]:
    from sqlalchemy import create_engine, pool, text

    engine = create_engine(services.database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return set(
                conn.execute(
                    text(
                        "SELECT DISTINCT usename FROM pg_stat_activity "
                        "WHERE datname = current_database() AND usename IS NOT NULL"
                    )
                ).scalars()
            )
    finally:
        engine.dispose()


def test_every_compose_service_runs_natively_and_passes_its_healthcheck(
    services: Services, tmp_path: Path
) -> None:
    compose = load_compose(example_variables())
    for name, argv in _backing_checks(services).items():
        test = compose["services"][name]["healthcheck"]["test"]
        assert argv[0] in " ".join(test), f"{name}'s healthcheck changed: adapt this test"
        if shutil.which(argv[0]) is not None:
            assert subprocess.run(argv, capture_output=True, check=False).returncode == 0, name

    queue = f"cxr-compose-{uuid.uuid4().hex[:8]}"
    adapter = Adapter(
        root=tmp_path / "root",
        database_url=services.database_url,
        broker_url=services.broker_url,
        extra_env={"CXR_QUEUE_NAME": queue, "CXR_RESULTS_QUEUE_NAME": f"{queue}-results"},
    )
    natives = native_services(compose, adapter, tmp_path)
    long_running = [s for s in natives if not one_shot(compose["services"][s.name])]
    assert {s.name for s in long_running} >= {"listener", "scheduler", "worker", "results", "web"}
    for service in long_running:
        assert service.healthcheck is not None, f"{service.name} has no healthcheck"

    for service in natives:
        if one_shot(compose["services"][service.name]):
            service.start()
            assert service.proc is not None
            assert service.proc.wait(timeout=300) == 0, service.log()
            service.stop()

    waiting: dict[str, NativeService] = {}
    codes: dict[str, int | None] = {}
    try:
        for service in long_running:
            service.start()
            waiting[service.name] = service

        next_check = dict.fromkeys(waiting, 0.0)

        def all_healthy() -> bool:
            for name, service in list(waiting.items()):
                assert service.alive(), f"{name} exited:\n{service.log()}"
                if time.monotonic() < next_check[name]:
                    continue  # each check starts a process: at most one a second each
                next_check[name] = time.monotonic() + CHECK_EVERY_S
                if service.healthy():
                    del waiting[name]
            return not waiting

        wait_for("every service healthy", all_healthy, timeout_s=HEALTHY_WITHIN_S)
        if services.roles:  # each connects as its own database role, as compose says
            # (the listener connects at its first C-STORE; the others on their own)
            wanted = {f"cxr_{s.name}" for s in long_running} - {"cxr_listener"}
            seen: set[str] = set()

            def connected() -> bool:
                seen.update(_connected_users(services))
                return wanted <= seen

            try:
                wait_for("every service connected as its role", connected, timeout_s=60)
            except AssertionError as exc:
                raise AssertionError(f"connected: {sorted(seen)}; wanted {sorted(wanted)}") from exc
            strangers = {u for u in seen if u.startswith("cxr") and u not in wanted}
            assert strangers <= {"cxr_listener"}, strangers
    finally:
        for service in long_running:  # SIGTERM to all, then wait: they stop side by side
            service.terminate()
        for service in long_running:
            codes[service.name] = service.stop()
    assert not waiting, {name: s.log() for name, s in waiting.items()}
    refused = [s.name for s in long_running if "permission denied" in s.log()]
    assert not refused, {name: s.log() for s in long_running if (name := s.name) in refused}
    unclean = {name: code for name, code in codes.items() if code != 0}
    assert not unclean, (unclean, {n: s.log() for s in long_running if (n := s.name) in unclean})
