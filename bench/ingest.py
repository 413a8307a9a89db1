"""Ingest: the cxr-triage listener against DCMTK ``storescp --fork``, same files, same client.

    python -m bench.ingest [--copies 160] [--associations 1,4] [--inputs uncompressed,j2k]
                           [--listener-processes 1] [--max-pdu 1048576] [--size 0]
                           [--out ingest.json]

N copies of a full-size DX (7.2 MB uncompressed, or JPEG 2000 lossless) are sent by
``--associations`` DCMTK ``storescu`` processes in parallel (N / k files each; ``-xv`` for
JPEG 2000), to ``cxr-triage listen`` (its own process, Postgres + Redis, durable writes:
file and folder fsynced, row committed, job enqueued before the success status) and to
``storescp --fork`` (a child per association, writes files, no fsync). Without storescu the
client is ``cxr-triage send``; without storescp the DCMTK rows are skipped. The clock runs
from starting the clients to the last one exiting; every file must have been stored.
``--listener-processes 1,2`` runs the cxr-triage side once per value (``listen --processes
N``: N children on one port, each as durable as one), a row each; ``--max-pdu
16382,1048576`` does the same for the Maximum Length the listener offers (pynetdicom's
default and ours, ``CXR_DICOM_MAX_PDU_BYTES``).
Goal 1 of issue 10: cxr-triage / DCMTK >= 1.0 at 4 associations (the summary: the best
listener-processes and max-pdu values, their worst input).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import (
    INPUT_KINDS,
    Bench,
    add_common_arguments,
    apply_threads,
    bench_services,
    clear_folder,
    free_port,
    make_copies,
    report,
    wait_for_port,
)
from cxr_common.settings import ListenerSettings

AE = "CXR_TRIAGE"


def _client_commands(files: list[Path], port: int, k: int, kind: str) -> list[list[str]]:
    chunks = [files[i::k] for i in range(k)]
    if shutil.which("storescu"):
        extra = ["-xv"] if kind == "j2k" else []
        return [
            ["storescu", "-aec", AE, "-aet", "BENCH", *extra, "127.0.0.1", str(port)]
            + [str(p) for p in chunk]
            for chunk in chunks
            if chunk
        ]
    return [
        [sys.executable, "-m", "cxr_triage", "send", "--no-progress", "--port", str(port)]
        + [str(p) for p in chunk]
        for chunk in chunks
        if chunk
    ]


def send_parallel(files: list[Path], port: int, k: int, kind: str) -> float:
    """Seconds from starting ``k`` clients to the last one exiting (all must succeed)."""
    commands = _client_commands(files, port, k, kind)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t0
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"client failed ({p.returncode}): {err.decode()[-500:]}")
    return elapsed


def run_cxr(
    bench: Bench,
    files: list[Path],
    k: int,
    kind: str,
    processes: int = 1,
    max_pdu: int | None = None,
) -> float:
    storage = bench.folder / "cxr-instances"
    clear_folder(storage)
    bench.reset()
    extra = {} if max_pdu is None else {"CXR_DICOM_MAX_PDU_BYTES": str(max_pdu)}
    proc, port = bench.listener(storage, processes, **extra)
    try:
        elapsed = send_parallel(files, port, k, kind)
    finally:
        bench.stop(proc)
    engine = bench.engine()
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM instances")).scalar_one()
    engine.dispose()
    shutil.rmtree(storage, ignore_errors=True)
    if stored != len(files):
        raise RuntimeError(f"cxr-triage recorded {stored} of {len(files)} instances")
    return elapsed


def run_dcmtk(
    folder: Path, files: list[Path], k: int, kind: str, pdu: int | None = None
) -> float | None:
    if shutil.which("storescp") is None:
        return None
    out = folder / "storescp-out"
    clear_folder(out)
    port = free_port()
    tuning = [] if pdu is None else ["-pdu", str(pdu)]
    scp = subprocess.Popen(
        ["storescp", "--fork", "+xa", *tuning, "-aet", AE, "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, scp)
        elapsed = send_parallel(files, port, k, kind)
    finally:
        scp.terminate()
        scp.wait(timeout=30)
    stored = sum(1 for _ in out.iterdir())
    shutil.rmtree(out, ignore_errors=True)
    if stored != len(files):
        raise RuntimeError(f"storescp stored {stored} of {len(files)} files")
    return elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=160)
    parser.add_argument("--associations", default="1,4")
    parser.add_argument("--inputs", default=",".join(INPUT_KINDS))
    parser.add_argument(
        "--listener-processes",
        default="1",
        help="comma-separated listener process counts for the cxr-triage side (default 1)",
    )
    parser.add_argument(
        "--max-pdu",
        default="",
        help="comma-separated Maximum Length values the listener offers "
        "(CXR_DICOM_MAX_PDU_BYTES; default: the setting's default), a row each",
    )
    parser.add_argument(
        "--dcmtk-pdu",
        type=int,
        default=None,
        help="storescp's -pdu (its maximum is 131072; default: DCMTK's 16384)",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    processes = [int(v) for v in args.listener_processes.split(",")]
    pdus: list[int | None] = [int(v) for v in args.max_pdu.split(",") if v] or [None]
    default_pdu = ListenerSettings.model_fields["dicom_max_pdu_bytes"].default
    rows: list[dict[str, Any]] = []
    client = "storescu" if shutil.which("storescu") else "cxr-triage send"
    with (
        tempfile.TemporaryDirectory(prefix="cxr-bench-ingest-") as d,
        bench_services(Path(d)) as bench,
    ):
        for kind in args.inputs.split(","):
            files = make_copies(kind, args.copies, Path(d) / "inputs" / kind, args.size)
            mb = sum(p.stat().st_size for p in files) / len(files) / 1e6
            for k in (int(v) for v in args.associations.split(",")):
                # side by side: DCMTK, cxr-triage (each process count), DCMTK again (the
                # mean of the two)
                first = run_dcmtk(Path(d), files, k, kind, args.dcmtk_pdu)
                cxr = {
                    (n, pdu): run_cxr(bench, files, k, kind, n, pdu)
                    for n in processes
                    for pdu in pdus
                }
                second = run_dcmtk(Path(d), files, k, kind, args.dcmtk_pdu)
                dcmtk = None if first is None or second is None else (first + second) / 2
                dcmtk_rate = None if dcmtk is None else len(files) / dcmtk
                for (n, pdu), elapsed in cxr.items():
                    cxr_rate = len(files) / elapsed
                    rows.append(
                        {
                            "input": kind,
                            "mb_per_file": round(mb, 2),
                            "associations": k,
                            "listener_processes": n,
                            "max_pdu": default_pdu if pdu is None else pdu,
                            "copies": len(files),
                            "cxr_img_s": cxr_rate,
                            "dcmtk_img_s": dcmtk_rate,
                            "ratio": None if dcmtk_rate is None else cxr_rate / dcmtk_rate,
                        }
                    )
            shutil.rmtree(Path(d) / "inputs" / kind, ignore_errors=True)
    # per (process count, PDU size), the worst input at 4 associations; the goal: the best
    at4: dict[tuple[int, int], float] = {}
    for r in rows:
        if r["associations"] == 4 and r["ratio"] is not None:
            key = (r["listener_processes"], r["max_pdu"])
            at4[key] = min(at4.get(key, r["ratio"]), r["ratio"])
    best = max(at4, key=at4.__getitem__) if at4 else None
    summary: dict[str, Any] = {
        "client": client,
        "goal_1_ratio_at_4_associations": None if best is None else at4[best],
    }
    if best is not None and len(processes) > 1:
        summary["goal_1_listener_processes"] = best[0]
    if best is not None and len(pdus) > 1:
        summary["goal_1_max_pdu"] = best[1]
    columns = ["input", "mb_per_file", "associations", "listener_processes", "max_pdu", "copies"]
    return report("ingest", args, rows, [*columns, "cxr_img_s", "dcmtk_img_s", "ratio"], summary)


if __name__ == "__main__":
    main()
