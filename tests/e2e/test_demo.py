"""`cxr-triage demo` on the embedded default: exits 0 and lists every sample, flagged first;
the terminal shows progress bars and results while the processes' logs go to demo.log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_runs_on_the_embedded_default_and_prints_the_triaged_worklist(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env["CXR_DATA_DIR"] = str(tmp_path / "data")
    out_dir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_triage", "demo", "--data-dir", str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Clinical decision support, not a diagnosis" in proc.stdout
    assert "LIKELY +" in proc.stdout
    # a clean terminal: progress bars per phase, results, where things went, the time
    for phase in ("services:", "send:", "scoring:"):
        assert phase in proc.stderr
    log_file = out_dir / "demo.log"
    assert str(log_file) in proc.stdout
    assert str(out_dir / "heatmaps") in proc.stdout
    assert "Demo finished in" in proc.stdout
    assert " INFO " not in proc.stdout + proc.stderr
    logs = log_file.read_text()
    assert "dicom_listener" in logs  # the listener's log lines
    assert "worker.app" in logs  # the worker's
    entries = json.loads((out_dir / "worklist.json").read_text())
    n_samples = len(list(SAMPLES.rglob("*.dcm")))
    assert sum(e["instances"] for e in entries) == n_samples
    flags = [e["flagged"] for e in entries]
    assert any(flags)
    assert flags == sorted(flags, reverse=True)
    assert {e["status"] for e in entries} <= {"done", "not_eligible", "failed"}
    assert any(e["status"] == "not_eligible" and e["reason"] for e in entries)
    heatmaps = list((out_dir / "heatmaps").glob("*.png"))
    assert heatmaps
    assert all(p.name[:2].isdigit() for p in heatmaps)  # rank-based names, no identifiers
    # everything the demo started is stopped again
    assert not (out_dir / "embedded" / "services.json").exists()
