"""Every benchmark runs on a tiny input and writes JSON of the documented shape.

Speed is never asserted: only that each benchmark runs end to end (real listener, worker,
DCMTK where installed) and reports what BENCHMARKS.md quotes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Services
from tests.peers import have_peer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED_ROWS = {
    "heatmap_cost": {"mode", "batch", "img_s", "ms_per_batch", "cost_vs_forward"},
    "distribution_cost": {"mode", "batch", "img_s", "ms_per_image", "cost_vs_before"},
    "worker_efficiency": {"stage", "ms_per_img"},
    "turnaround": {"phase", "n", "p50_s", "p95_s", "max_s"},
    "ingest": {"input", "associations", "copies", "cxr_img_s", "dcmtk_img_s", "ratio"},
    "worker_scaling": {"workers", "batch", "img_s", "vs_1_worker"},
    "batch_sweep": {"batch", "scoring_img_s", "end_to_end_img_s"},
    "decode": {"input", "decode_ms", "img_s_per_core", "ceiling_img_s"},
}


def test_every_benchmark_runs_on_a_tiny_input_and_writes_its_json(
    services: Services, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATABASE_URL=services.database_url,
        CXR_BROKER_URL=services.broker_url,
        PYTHONPATH=str(REPO),
    )
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--tiny", "--threads", "1", "--out-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name, columns in EXPECTED_ROWS.items():
        result = json.loads((out / f"{name}.json").read_text())
        assert result["benchmark"] == name
        assert {"date", "host_cpus", "torch"} <= result["machine"].keys()
        assert result["rows"], name
        for row in result["rows"]:
            assert row.keys() >= columns or name == "worker_efficiency", (name, row)
        assert f"== {name} ==" in run.stdout

    heat = json.loads((out / "heatmap_cost.json").read_text())
    assert {r["mode"] for r in heat["rows"]} == {"forward", "forward+fast_cam", "forward+grad_cam"}
    eff = json.loads((out / "worker_efficiency.json").read_text())
    stages = {r["stage"] for r in eff["rows"]}
    assert {"db_claim_write", "read_parse", "eligibility_decode", "preprocess"} <= stages
    assert {"forward_heatmap", "png", "sum of stages", "end to end (1 worker)"} <= stages
    assert eff["summary"]["goal_3_ratio"] > 0
    turn = json.loads((out / "turnaround.json").read_text())
    assert [r["phase"] for r in turn["rows"]] == ["idle", "backlog of 2"]
    assert all(0 < r["p50_s"] <= r["p95_s"] <= r["max_s"] for r in turn["rows"])
    ingest = json.loads((out / "ingest.json").read_text())
    assert {r["input"] for r in ingest["rows"]} == {"uncompressed", "j2k"}
    dcmtk = have_peer("dcmtk")
    assert all((r["dcmtk_img_s"] is not None) == dcmtk for r in ingest["rows"])
    goals = json.loads((out / "goals.json").read_text())
    assert {"goal_2_cost_after_fast_cam", "goal_3_ratio", "goal_4_idle_p95_s"} <= goals.keys()
    assert goals["goal_21_distribution_check_cost"] > 0
    assert "goal_1_ratio_at_4_associations" in goals
