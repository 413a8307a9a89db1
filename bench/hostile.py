"""Hostile structure (issue 20), before and after: each file of the hostile corpus through
the listener's header read and the worker's read and decode, each in a fresh process, with
its peak RSS, time and outcome.

    python -m bench.hostile --corpus /tmp/hostile [--code ../older-checkout] [--out hostile.json]

``--corpus``: a folder to build the corpus in (``tests.poison.HOSTILE``; reused when the
files are there). ``--code``: the checkout whose ``cxr_imaging`` is measured (default:
this one), so the same command on an older checkout gives the "before" column. Each step
runs in its own ``python`` (``PYTHONPATH`` = ``--code``) with a 300 s limit:

* listener: ``cxr_imaging.limits.check_instance(path, DecodeLimits())``, the one header
  read of ``cxr_ingest.header.read_received`` (the C-STORE status it maps to);
* worker: ``read_checked_dataset`` then ``decode_dataset``, as ``worker.pipeline`` does
  before the model.

Peak RSS is the child's VmHWM (``ru_maxrss`` would carry the parent's peak across
``exec``; a bare interpreter with pydicom and numpy is about 60 MiB); the real processes'
peaks, with everything they load, are measured by
``tests/integration/test_hostile_memory.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_STEP = r"""
import json, sys, time
from pathlib import Path
path, step = Path(sys.argv[1]), sys.argv[2]
from cxr_imaging.limits import DecodeLimits, check_instance, read_checked_dataset
from cxr_imaging import decode_dataset
t0 = time.perf_counter()
outcome = "accepted"
try:
    if step == "listener":
        check_instance(path, DecodeLimits())
    else:
        image = decode_dataset(read_checked_dataset(path, DecodeLimits()))
        outcome = f"decoded {image.rows} x {image.columns}"
except Exception as exc:
    status = getattr(exc, "store_status", None)
    outcome = (f"0x{status:04X} " if status else "") + f"{type(exc).__name__}: {exc}"[:160]
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM")]
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - t0,
                  "peak_mib": int(hwm[0].split()[1]) / 1024}))
"""


def _run(code: Path, path: Path, step: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(code))
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _STEP, str(path), step],
            env=env,
            cwd=code,  # python -c puts the working folder first on sys.path
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"outcome": "still running after 300 s (killed)", "seconds": 300.0}
    if done.returncode != 0 or not done.stdout.strip():
        return {
            "outcome": f"process ended with {done.returncode}: {done.stderr.strip()[-160:]}",
            "seconds": time.monotonic() - t0,
        }
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from tests import poison  # the builders (test support, not a runtime import)

    args.corpus.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (build, _status, _fragment) in sorted(poison.HOSTILE.items()):
        path = args.corpus / f"{name}.dcm"
        if not path.exists():
            build(path)
        row = {"file": name, "bytes": path.stat().st_size}
        for step in ("listener", "worker"):
            row[step] = _run(args.code.resolve(), path, step)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"code": str(args.code), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
