"""Run every benchmark, write each one's JSON into ``--out-dir`` and print the goal ratios.

    python -m bench.run_all [--out-dir bench-results] [--tiny] [--full] [--threads 1]
                            [--only ingest,heatmap_cost,...]

Defaults are CI-sized (minutes on a small machine); ``--tiny`` shrinks every input to a
smoke run (seconds per benchmark, numbers meaningless); ``--full`` uses issue 10's sizes
(160 full-size copies for ingest, a backlog of 1,000 for turnaround).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    batch_sweep,
    decode,
    distribution_cost,
    heatmap_cost,
    ingest,
    turnaround,
    worker_efficiency,
    worker_scaling,
)

BENCHMARKS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "heatmap_cost": heatmap_cost.main,
    "distribution_cost": distribution_cost.main,
    "worker_efficiency": worker_efficiency.main,
    "turnaround": turnaround.main,
    "ingest": ingest.main,
    "worker_scaling": worker_scaling.main,
    "batch_sweep": batch_sweep.main,
    "decode": decode.main,
}

#: Arguments per benchmark: (default run, --tiny, --full).
SIZES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "heatmap_cost": ([], ["--images", "4", "--repeats", "1", "--batch", "2"], []),
    "distribution_cost": ([], ["--images", "4", "--repeats", "1", "--batch", "2"], []),
    "worker_efficiency": ([], ["--images", "2", "--batch", "2", "--size", "128"], []),
    "turnaround": (
        ["--backlog", "200"],
        ["--idle", "2", "--backlog", "2", "--associations", "2", "--size", "128"],
        ["--full"],
    ),
    "ingest": (
        ["--copies", "40", "--listener-processes", "1,2", "--max-pdu", "16382,1048576"],
        ["--copies", "2", "--associations", "2", "--size", "128"],
        ["--copies", "160", "--listener-processes", "1,2,4"],
    ),
    "worker_scaling": (
        [],
        ["--workers", "1", "--images", "2", "--batch", "2", "--size", "128"],
        [],
    ),
    "batch_sweep": (
        [],
        [
            "--batches",
            "1,2",
            "--images",
            "2",
            "--repeats",
            "1",
            "--end-to-end-images",
            "2",
            "--size",
            "128",
        ],
        [],
    ),
    "decode": ([], ["--images", "1", "--repeats", "1", "--size", "128"], []),
}


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, default=Path("bench-results"))
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true")
    size.add_argument("--full", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    args = parser.parse_args(argv)
    results = {}
    for name in args.only.split(","):
        default, tiny, full = SIZES[name]
        extra = tiny if args.tiny else (default + full if args.full else default)
        out = args.out_dir / f"{name}.json"
        results[name] = BENCHMARKS[name](
            [*extra, "--threads", str(args.threads), "--out", str(out)]
        )
        print(flush=True)
    goals = {
        k: v for r in results.values() for k, v in r["summary"].items() if k.startswith("goal_")
    }
    print("== goals (issue 10) ==")
    for key, value in goals.items():
        print(f"{key}: {value:.3g}" if isinstance(value, float) else f"{key}: {value}")
    (args.out_dir / "goals.json").write_text(json.dumps(goals, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
