"""The hostile corpus of issue 20 against the real listener and the real worker, each in
its own process, with their peak RSS (VmHWM) after every file: the listener stays under
1 GiB and the worker under 3 GiB, and every file is refused (listener: its C-STORE status
and Error Comment) or failed (worker: a coded reason on the row).

The listener refuses every file of the corpus, so the worker never sees them through it;
the worker is fed each file directly (the row recorded and the job enqueued as the
listener would have), which is what a file stored before these checks existed, or
through a path that skips them, would meet.

``pytest -s`` prints the table RELIABILITY.md ("Round two") quotes::

    pytest -s -m slow tests/integration/test_hostile_memory.py
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, text

from cxr_db.instances import writes as repo
from cxr_ingest.enqueue import enqueue_instance
from cxr_queue import ScoreJob, make_celery
from tests import poison
from tests.conftest import Services
from tests.dicom_factory import chest_like, write
from tests.listener_support import files_under, instance_count, store_files
from tests.support import running, wait_until

FINAL = ("failed", "done", "not_eligible")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

GIB = 1 << 30
LISTENER_BOUND = 1 * GIB
WORKER_BOUND = 3 * GIB
#: What the worker's failure reason says, by the status the listener answers.
WORKER_REASON = {
    0xC223: "the header holds",
    0xC220: "Pixel Data holds",
    0xC221: "codestream dimensions",
}


def _vm_hwm(pid: int) -> int:
    """The largest peak resident set (/proc VmHWM, bytes) of ``pid`` and its descendants
    (``cxr-triage work`` runs the Celery worker in a supervised child)."""
    peaks = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
    assert peaks, "no VmHWM"
    return max(peaks)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f}"


def _start_listener(services: Services, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = folder / "port"
    env = services.env()
    env.update(CXR_STORAGE_URI=(folder / "instances").as_uri())
    code = (
        "import pathlib; from cxr_common.settings import listener_settings; "
        "from cxr_db import make_engine; from cxr_queue import make_celery; "
        "from cxr_common.lifecycle import stop_on_signals; "
        "from dicom_listener.server import start_listener; "
        "s = listener_settings().with_overrides(dicom_host='127.0.0.1', dicom_port=0); "
        "e = make_engine(s.database_url_value()); "
        "h = start_listener(s, e, make_celery(s.broker_url_value(), s.queue_name)); "
        f"pathlib.Path({str(port_file)!r}).write_text(str(h.port)); "
        "stop = stop_on_signals('test').__enter__(); stop.wait(); h.shutdown()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    wait_until(
        lambda: port_file.exists() and port_file.read_text(),
        120,
        "the listener's port written",
        alive=running([proc]),
    )
    return proc, int(port_file.read_text())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_hostile_corpus_is_refused_within_bounded_memory(
    services: Services, engine: Engine, tmp_path: Path
) -> None:
    names = sorted(poison.HOSTILE)
    paths = {n: poison.HOSTILE[n][0](tmp_path / "corpus" / f"{n}.dcm") for n in names}
    rows: list[str] = []

    # --- listener: one process, every file over its own association ---------------------
    listener, port = _start_listener(services, tmp_path / "listener")
    answers = {}
    listener_peaks = {}
    listener_times = {}
    try:
        listener_start = _vm_hwm(listener.pid)
        for name in names:
            t0 = time.monotonic()
            (answers[name],) = store_files(port, [paths[name]])
            listener_times[name] = time.monotonic() - t0
            listener_peaks[name] = _vm_hwm(listener.pid)
    finally:
        _stop(listener)
    assert instance_count(engine) == 0
    assert files_under(tmp_path / "listener" / "instances") == []

    # --- worker: one process, each file as a stored instance ----------------------------
    storage = services.data_dir / "instances" / "hostile"
    storage.mkdir(parents=True, exist_ok=True)
    env = services.env()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "work"], env=env, stdout=out, stderr=out
        )
    celery_app = make_celery(services.broker_url, services.queue_name)
    worker_results = {}
    # An ordinary chest DX first: the worker loads its model and scores it, so the peaks
    # after it are those of a worker in service.
    warm_up = write(poison.dx_dataset(chest_like(256)), tmp_path / "corpus" / "warm-up.dcm")
    try:
        worker_start = 0
        for name in ["warm-up", *names]:
            source = warm_up if name == "warm-up" else paths[name]
            stored = shutil.copy(source, storage / f"{name}.dcm")
            sop = generate_uid()
            rec = repo.InstanceRecord(
                study_instance_uid=generate_uid(),
                sop_instance_uid=sop,
                sop_class_uid=poison.DX_FOR_PRESENTATION,
                series_instance_uid=None,
                transfer_syntax_uid=None,
                accession_number=None,
                modality="DX",
                body_part="CHEST",
                view_position="PA",
                calling_ae_title="HOSTILE",
                storage_uri=Path(stored).as_uri(),
                size_bytes=Path(stored).stat().st_size,
            )
            instance_id = repo.record_instance(engine, rec).instance_id
            t0 = time.monotonic()
            enqueue_instance(
                engine,
                celery_app,
                services.queue_name,
                ScoreJob(
                    instance_id=instance_id, sop_instance_uid=sop, storage_uri=rec.storage_uri
                ),
            )

            def final(instance: int = instance_id) -> tuple[str, str | None] | None:
                with engine.begin() as conn:
                    row = conn.execute(
                        text("SELECT status, reason FROM instances WHERE id = :i"),
                        {"i": instance},
                    ).one()
                return (str(row.status), row.reason) if row.status in FINAL else None

            status, reason = wait_until(
                final, 300, f"{name} final in the worker", alive=running([worker], log)
            )
            if name == "warm-up":
                assert status == "done", reason
                worker_start = _vm_hwm(worker.pid)
                continue
            worker_results[name] = (status, reason, time.monotonic() - t0, _vm_hwm(worker.pid))
    finally:
        _stop(worker)

    print(
        f"\nlistener VmHWM at start {_mib(listener_start)} MiB; worker VmHWM after scoring an "
        f"ordinary DX {_mib(worker_start)} MiB\n"
        "| file | size | listener answer | listener peak RSS (MiB) | listener time (s) "
        "| worker outcome | worker peak RSS (MiB) | worker time (s) |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for name in names:
        answer = answers[name]
        status, reason, seconds, peak = worker_results[name]
        rows.append(
            f"| {name} | {paths[name].stat().st_size / 1e6:,.3f} MB "
            f"| 0x{answer.status:04X} {answer.error_comment} | {_mib(listener_peaks[name])} "
            f"| {listener_times[name]:.2f} | {status}: {(reason or '')[:90]} | {_mib(peak)} "
            f"| {seconds:.2f} |"
            if answer is not None
            else f"| {name} | no answer |"
        )
    print("\n".join(rows))

    for name in names:
        _build, expected_status, fragment = poison.HOSTILE[name]
        answer = answers[name]
        assert answer is not None, name
        assert answer.status == expected_status, (name, answer)
        assert answer.error_comment is not None
        assert fragment in answer.error_comment, (name, answer)
        status, reason, _seconds, _peak = worker_results[name]
        assert status == "failed", (name, status, reason)
        assert reason is not None
        assert WORKER_REASON[expected_status] in reason, (name, reason)
    assert max(listener_peaks.values()) < LISTENER_BOUND
    assert max(peak for *_rest, peak in worker_results.values()) < WORKER_BOUND
