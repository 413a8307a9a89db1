"""``cxr-triage demo``: the whole spine on the bundled samples, start to finish.

Starts (or uses) Postgres and Redis, migrates, starts a listener and a worker, sends the
bundled sample studies over a real DICOM association, waits until each instance is final,
prints the triaged worklist, writes the heatmaps, stops everything it started.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from cxr_common.settings import ListenerSettings
from cxr_db import make_engine, reads
from cxr_db.statuses import FINAL_STATUSES, InstanceStatus
from cxr_triage.embedded import free_port
from cxr_triage.processes import Child, spawn, stop_all, wait_for_port
from cxr_triage.services import resolve_services
from cxr_triage.worklist_view import as_json, as_table

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


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
            statuses = reads.instance_statuses(engine)
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
            png = reads.heatmap_png(engine, sop)
            if png:
                tag = hashlib.sha256(sop.encode()).hexdigest()[:8]
                (out_dir / f"{rank:02d}-{tag}.png").write_bytes(png)
                written += 1
    engine.dispose()
    return written


def run_demo(data_dir: Path, timeout_s: float = 240, keep: bool = False) -> int:
    """Run the demo in ``data_dir`` (emptied first). Returns the process exit code."""
    from cxr_triage.send import send_paths
    from migrations import upgrade_to_head

    settings = ListenerSettings()
    t0 = time.monotonic()
    if data_dir.exists() and not keep:
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    files = sample_files()
    if not files:
        print(f"no sample DICOM files found in {SAMPLES_DIR}: reinstall cxr-triage")
        return 2
    services = resolve_services(settings, data_dir)
    children: list[Child] = []
    try:
        upgrade_to_head(services.database_url)
        port = free_port()
        env = services.child_env(dict(os.environ))
        env.update(
            CXR_DICOM_PORT=str(port),
            CXR_DICOM_HOST="127.0.0.1",
            CXR_DATA_DIR=str(data_dir),
            CXR_STORAGE_URI=(data_dir / "instances").resolve().as_uri(),
            CXR_RECONCILE_INTERVAL_S="5",
        )
        children.append(spawn("listener", ["listen"], env))
        children.append(spawn("worker", ["work"], env))
        wait_for_port("127.0.0.1", port, children, timeout_s=60)
        print(f"Sending {len(files)} sample instances over DICOM to 127.0.0.1:{port} ...")
        report = send_paths(files, "127.0.0.1", port, called_ae=settings.ae_title)
        print(f"sent {report.sent}, failed {report.failed}, skipped {report.skipped}")
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
        print(f"\nHeatmaps: {n} PNG files in {heatmap_dir}")
        print(f"Worklist as JSON: {data_dir / 'worklist.json'}")
        print(f"Demo finished in {time.monotonic() - t0:.0f} s.")
        if pending or report.failed or len(statuses) < report.sent:
            print(f"{len(pending)} instances did not finish in {timeout_s:.0f} s")
            return 1
        return 0
    finally:
        stop_all(children)
        services.stop()
