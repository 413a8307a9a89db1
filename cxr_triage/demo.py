"""``cxr-triage demo``: the whole spine on the bundled samples, start to finish.

Starts (or uses) Postgres and Redis, migrates, starts a listener, the scheduler and a
worker, sends the bundled sample studies over a real DICOM association, waits until each
instance is final, prints the triaged worklist, writes the heatmaps, stops everything it
started.

The demo starts no results sender (``send-results``): nothing goes to PACS, whatever
``CXR_RESULT_DESTINATIONS`` says. Its scheduler still completes quiet studies and enqueues
their results jobs, on a results queue of the demo's own (:func:`demo_results_queue`), which
the demo empties when it stops: with a configured broker, a site's running sender never sees
the demo's sample studies, and nothing is left behind.

The terminal shows one progress bar per phase (services, send, scoring), then the
worklist, where the files went and the wall time. Every log line, ours and the children's,
goes to ``demo.log`` in the demo folder unless ``verbose``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tqdm import tqdm

from cxr_common.settings import SupervisorSettings
from cxr_db import make_engine
from cxr_db.instances import reads as instance_reads
from cxr_db.instances.statuses import FINAL_STATUSES, InstanceStatus
from cxr_db.worklist import reads
from cxr_triage.embedded import free_port
from cxr_triage.processes import Child, settings_env, spawn, stop_all, wait_for_port
from cxr_triage.services import ResolvedServices, resolve_services
from cxr_triage.worklist_view import as_json, as_table

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

#: What the demo's listener and worker must see of its settings.
CHILD_SETTINGS = (
    "database_url",
    "broker_url",
    "data_dir",
    "storage_uri",
    "dicom_host",
    "dicom_port",
    "reconcile_interval_s",
    "results_queue_name",
)


def demo_results_queue() -> str:
    """A results queue of this demo run's own: no sender consumes it."""
    return f"cxr-demo-results-{uuid.uuid4().hex[:8]}"


def discard_results_jobs(broker_url: str, queue_name: str) -> int:
    """Drop the demo's unsent results jobs (the Redis list of ``queue_name``); returns how
    many there were. A broker that does not answer is left as it is (logged)."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.llen(queue_name)
        pipe.delete(queue_name)
        n, _ = pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not drop the demo's results queue (%s)", type(exc).__name__)
        return 0
    finally:
        client.close()
    log.info("dropped %d unsent results job(s) of the demo (no results sender runs)", int(n))
    return int(n)


def sample_files(folder: Path = SAMPLES_DIR) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


def _wait_until_final(
    engine_url: str, expected: int, timeout_s: float, children: list[Child]
) -> dict[str, InstanceStatus]:
    engine = make_engine(engine_url, pool_size=1)
    final = {s.value for s in FINAL_STATUSES}
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, InstanceStatus] = {}
    with tqdm(total=expected, desc="scoring", unit="img") as bar:
        while time.monotonic() < deadline:
            statuses = instance_reads.instance_statuses(engine)
            done = sum(1 for s in statuses.values() if s in final)
            bar.update(done - bar.n)
            if len(statuses) >= expected and done >= expected:
                break
            for child in children:
                if child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited early (code {child.proc.returncode})")
            time.sleep(0.25)
    engine.dispose()
    return statuses


def write_heatmaps(engine_url: str, out_dir: Path) -> int:
    """Write each study's heatmaps as ``<worklist rank>-<hash>.png`` (no identifiers)."""
    engine = make_engine(engine_url, pool_size=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for rank, entry in enumerate(reads.worklist(engine), 1):
        for sop in entry.heatmap_sop_instance_uids:
            png = instance_reads.heatmap_png(engine, sop)
            if png:
                tag = hashlib.sha256(sop.encode()).hexdigest()[:8]
                (out_dir / f"{rank:02d}-{tag}.png").write_bytes(png)
                written += 1
    engine.dispose()
    return written


@contextmanager
def _logs_to(log_path: Path, verbose: bool) -> Iterator[IO[bytes] | None]:
    """Send this process's log records to ``log_path`` and yield the file for the
    children's output; with ``verbose`` leave both on the terminal (yield None)."""
    if verbose:
        yield None
        return
    root = logging.getLogger()
    saved = list(root.handlers)
    with log_path.open("ab", buffering=0) as children_log:
        handler = logging.FileHandler(log_path, encoding="utf-8")
        if saved:
            handler.setFormatter(saved[0].formatter)
        root.handlers = [handler]
        try:
            yield children_log
        finally:
            root.handlers = saved
            handler.close()


def run_demo(
    settings: SupervisorSettings,
    data_dir: Path,
    timeout_s: float = 240,
    keep: bool = False,
    verbose: bool = False,
) -> int:
    """Run the demo in ``data_dir`` (emptied first). Returns the process exit code."""
    t0 = time.monotonic()
    if data_dir.exists() and not keep:
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    files = sample_files()
    if not files:
        print(f"no sample DICOM files found in {SAMPLES_DIR}: reinstall cxr-triage")
        return 2
    log_path = data_dir / "demo.log"
    if not verbose:
        print(f"Logs of the listener and the worker: {log_path}")
    try:
        with _logs_to(log_path, verbose) as children_log:
            code = _run(settings, data_dir, files, timeout_s, children_log)
    except (RuntimeError, TimeoutError) as exc:  # a child died or never listened
        print(f"demo failed: {exc}")
        code = 1
    if not verbose:
        print(f"See {log_path} for what went wrong." if code else f"Logs: {log_path}")
    print(f"Demo finished in {time.monotonic() - t0:.0f} s.")
    return code


def _run(
    settings: SupervisorSettings,
    data_dir: Path,
    files: list[Path],
    timeout_s: float,
    children_log: IO[bytes] | None,
) -> int:
    from cxr_triage.models_cli import migrate_registers_model
    from cxr_triage.send import send_paths

    children: list[Child] = []
    services: ResolvedServices | None = None
    try:
        with tqdm(total=3, desc="services", unit="step") as bar:
            bar.set_postfix_str("Postgres and Redis")
            services = resolve_services(settings, data_dir)
            services.prepare(migrate=True)
            if services.roles:  # what `migrate` does: the worker's role only reads models
                migrate_registers_model(settings, services.database_url)
            bar.update()
            bar.set_postfix_str("listener and worker")
            settings = services.apply(settings).with_overrides(
                data_dir=data_dir,
                dicom_host="127.0.0.1",
                dicom_port=free_port(),
                storage_uri=(data_dir / "instances").resolve().as_uri(),
                reconcile_interval_s=5.0,
                results_queue_name=demo_results_queue(),
            )
            env = dict(os.environ) | settings_env(settings, CHILD_SETTINGS)
            for kind, command in (("listener", "listen"), ("scheduler", "schedule")):
                children.append(spawn(kind, [command], services.child_env(env, kind), children_log))
            children.append(
                spawn("worker", ["work"], services.child_env(env, "worker"), children_log)
            )
            bar.update()
            bar.set_postfix_str("waiting for the listener")
            wait_for_port(settings.dicom_host, settings.dicom_port, children, timeout_s=60)
            bar.update()
            bar.set_postfix_str("ready")

        report = send_paths(
            files,
            settings.dicom_host,
            settings.dicom_port,
            called_ae=settings.ae_title,
            desc="send",
        )
        statuses = _wait_until_final(services.database_url, report.sent, timeout_s, children)
        final = {s.value for s in FINAL_STATUSES}
        pending = [s for s in statuses.values() if s not in final]
        engine = make_engine(services.database_url, pool_size=1)
        entries = reads.worklist(engine)
        engine.dispose()
        print()
        print(as_table(entries))
        (data_dir / "worklist.json").write_text(as_json(entries))
        heatmap_dir = data_dir / "heatmaps"
        n = write_heatmaps(services.database_url, heatmap_dir)
        print(f"\nSent {report.sent} instances, failed {report.failed}, skipped {report.skipped}.")
        print(f"Heatmaps: {n} PNG files in {heatmap_dir}")
        print(f"Worklist as JSON: {data_dir / 'worklist.json'}")
        if pending or report.failed or len(statuses) < report.sent:
            print(f"{len(pending)} instances did not finish in {timeout_s:.0f} s")
            return 1
        return 0
    finally:
        stop_all(children)
        if services is not None:
            if settings.results_queue_name.startswith("cxr-demo-results-"):
                discard_results_jobs(services.broker_url, settings.results_queue_name)
            services.stop()
