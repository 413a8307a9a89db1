"""``cxr-triage listen --processes 2`` (issue 10, goal 1): two listener children share one
port (SO_REUSEPORT); parallel associations are all answered with success, every instance
is recorded exactly once, and SIGTERM to the parent leaves no child behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from cxr_db.instances.statuses import InstanceStatus
from dicom_listener.statuses import EchoStatus, StoreStatus
from tests.conftest import Services
from tests.dicom_factory import chest_like, make_dataset
from tests.listener_support import echo, store_files
from tests.support import free_port, running, wait_until

pytestmark = pytest.mark.integration

ASSOCIATIONS = 4
PER_ASSOCIATION = 3
STARTED = re.compile(r"started listener-(\d) \(pid (\d+)\)")


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_for(condition: Callable[[], object], what: str, parent: subprocess.Popen[bytes]) -> None:
    """Poll ``condition`` until it holds; fail if the parent exits first."""
    wait_until(condition, 120, what, alive=running([parent]))


@pytest.fixture
def two_listeners(
    services: Services, engine: Engine, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``cxr-triage listen --processes 2`` on a free port; yields it, the port, its log."""
    port = free_port()
    env = services.env("listener")
    env.update(
        CXR_DICOM_HOST="127.0.0.1",
        CXR_DICOM_PORT=str(port),
        CXR_STORAGE_URI=(tmp_path / "instances").as_uri(),
        CXR_DATA_DIR=str(tmp_path),
        # all senders are 127.0.0.1; a just-closed echo must not count against the 4
        CXR_MAX_ASSOCIATIONS_PER_PEER="16",
    )
    log = tmp_path / "listen.log"
    with open(log, "wb") as out:  # the children inherit it
        parent = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "listen", "--processes", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # both children bound the shared port (each logs it once it listens)
        _wait_for(
            lambda: all(
                f"(process {i}, shared port) on 127.0.0.1:{port}" in log.read_text()
                for i in range(2)
            ),
            "two listening children",
            parent,
        )
        yield parent, port, log
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_two_listener_processes_store_every_instance_once_and_stop_on_sigterm(
    two_listeners: tuple[subprocess.Popen[bytes], int, Path], engine: Engine
) -> None:
    parent, port, log = two_listeners
    children = {int(i): int(pid) for i, pid in STARTED.findall(log.read_text())}
    assert sorted(children) == [0, 1]
    assert all(_alive(pid) for pid in children.values())
    assert echo(port) == EchoStatus.SUCCESS

    batches = [
        [make_dataset(chest_like(seed=a * PER_ASSOCIATION + i)) for i in range(PER_ASSOCIATION)]
        for a in range(ASSOCIATIONS)
    ]
    with ThreadPoolExecutor(ASSOCIATIONS) as pool:
        answers = list(pool.map(lambda batch: store_files(port, batch), batches))
    statuses = [a.status if a else None for batch in answers for a in batch]
    assert statuses == [StoreStatus.SUCCESS] * (ASSOCIATIONS * PER_ASSOCIATION)

    sent = sorted(str(ds.SOPInstanceUID) for batch in batches for ds in batch)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT sop_instance_uid, status FROM instances")).all()
    assert sorted(uid for uid, _ in rows) == sent  # each exactly once
    assert {status for _, status in rows} <= {InstanceStatus.RECEIVED, InstanceStatus.QUEUED}

    os.kill(parent.pid, signal.SIGTERM)
    assert parent.wait(timeout=120) == 0
    assert [pid for pid in children.values() if _alive(pid)] == []
