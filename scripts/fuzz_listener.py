#!/usr/bin/env python3
"""Long fuzz profile of the DICOM listener (issue 12): 10,000 cases by default, 60 % mutated
data sets over C-STORE and 40 % mutated association byte streams, through real
associations to an in-process listener with real Postgres and Redis.

    CXR_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
    CXR_TEST_BROKER_URL=redis://127.0.0.1:6379/0 \\
    nice -n 19 python scripts/fuzz_listener.py --examples 10000

Prints one JSON line per run (tried / acknowledged / refused / aborted / crashed / hangs /
echo failures / lost, the statuses answered, seconds) and exits non-zero on any crash,
hang, lost instance or unanswered C-ECHO. The suite runs the same tests with 500 cases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="cases in all")
    parser.add_argument("--report", type=Path, help="append the JSON lines (and progress) here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        # The report gets a partial line every 500 cases, then one line per finished run.
        report = args.report or Path(folder) / "fuzz.jsonl"
        env = dict(os.environ, CXR_FUZZ_EXAMPLES=str(args.examples), CXR_FUZZ_REPORT=str(report))
        env.setdefault("PYTHONPATH", str(REPO))
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/fuzz", "-q", "-p", "no:cacheprovider"],
            cwd=REPO,
            env=env,
            check=False,
        )
        lines = report.read_text().splitlines() if report.exists() else []
    final = [line for line in lines if '"partial": true' not in line]
    for line in final or lines[-2:]:
        print(line)  # noqa: T201 - a CLI
    totals = [json.loads(line) for line in final]
    print(  # noqa: T201 - a CLI
        "fuzz total: "
        + ", ".join(
            f"{key} {sum(int(t[key]) for t in totals)}"
            for key in (
                "tried",
                "acknowledged",
                "refused",
                "aborted",
                "crashed",
                "hangs",
                "echo_failures",
                "lost",
            )
        )
    )
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
