"""What the benchmarks share: generated inputs, services, processes, tables and JSON.

Inputs are the committed samples made into full-size radiographs: the chest CR
``rg1-j2k-monochrome1-16bit.dcm`` (1955 x 1841, 15 of 16 bits) decoded and wrapped as a DX
For Presentation instance, stored uncompressed (7.2 MB) or JPEG 2000 lossless; copies get
new UIDs. ``--size`` shrinks them for smoke runs.

Services: ``CXR_DATABASE_URL``/``CXR_BROKER_URL`` when both are set (a fresh database
``cxr_bench_*`` is created on that server and dropped afterwards; jobs go to a queue of the
benchmark's own), else the embedded Postgres + Redis in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from cxr_triage.demo import SAMPLES_DIR

SOURCE = SAMPLES_DIR / "rg1-j2k-monochrome1-16bit.dcm"
INPUT_KINDS = ("uncompressed", "j2k")


# --- output -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine and software a number was measured on."""
    import torch

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain text table of ``rows`` (floats with 3 significant decimals)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def report(
    name: str,
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    columns: Sequence[str],
    summary: dict[str, Any],
) -> dict[str, Any]:
    """Print the table and the summary; write the JSON to ``args.out`` when given."""
    result = {
        "benchmark": name,
        "machine": machine(),
        "params": {k: v for k, v in vars(args).items() if k != "out" and _jsonable(v)},
        "rows": rows,
        "summary": summary,
    }
    print(f"== {name} ==")
    print(table(rows, columns))
    for key, value in summary.items():
        print(f"{key}: {value:.3g}" if isinstance(value, float) else f"{key}: {value}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | list) or v is None


def add_common_arguments(parser: argparse.ArgumentParser, *, inputs: bool = True) -> None:
    """--out and --threads; --size for benchmarks with generated radiographs."""
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per process (0 = torch default)"
    )
    if not inputs:
        return
    parser.add_argument(
        "--size",
        type=int,
        default=0,
        help="longest side of the generated radiographs (0 = full size, 1955)",
    )


def apply_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads here and in the workers started from here (0 = the
    torch default: one per core). On a shared machine more threads than free cores make
    torch many times slower (threads wait for each other), so compare at 1."""
    if threads > 0:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --- inputs -------------------------------------------------------------------------------


def _base_pixels(size: int) -> np.ndarray:
    """The source chest CR's stored pixels (uint16), optionally shrunk to ``size``."""
    pixels = np.asarray(pydicom.dcmread(SOURCE).pixel_array, dtype=np.uint16)
    if size and max(pixels.shape) > size:
        step = -(-max(pixels.shape) // size)
        pixels = np.ascontiguousarray(pixels[::step, ::step])
    return pixels


def template(kind: str, size: int = 0) -> Dataset:
    """A DX For Presentation chest PA instance with the source's pixels, ``kind``
    uncompressed (Explicit VR Little Endian) or j2k (JPEG 2000 lossless)."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"input kind {kind!r}: one of {INPUT_KINDS}")
    src = pydicom.dcmread(SOURCE, stop_before_pixels=True)
    pixels = _base_pixels(size)
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientID = "BENCH-0001"
    ds.PatientName = "Bench^Synthetic"
    ds.AccessionNumber = "BENCH"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = src.PhotometricInterpretation
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = int(src.BitsStored)
    ds.HighBit = int(src.BitsStored) - 1
    ds.PixelRepresentation = 0
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in src:
            setattr(ds, keyword, src[keyword].value)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    _new_uids(ds)
    if kind == "j2k":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return ds


def _new_uids(ds: Dataset) -> None:
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def make_copies(kind: str, n: int, folder: Path, size: int = 0, prefix: str = "") -> list[Path]:
    """``n`` files of one template with new Study/Series/SOP Instance UIDs each."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = template(kind, size)
    files = []
    for i in range(n):
        _new_uids(ds)
        path = folder / f"{prefix}{kind}-{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


# --- services and processes ----------------------------------------------------------------


@dataclass
class Bench:
    """Services for one benchmark: a database of its own, a queue of its own, a folder."""

    database_url: str
    broker_url: str
    queue: str
    folder: Path
    _cleanup: list[Any] = field(default_factory=list)
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def engine(self) -> Any:
        from cxr_db import make_engine

        return make_engine(self.database_url)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
        env.update(
            CXR_DATABASE_URL=self.database_url,
            CXR_BROKER_URL=self.broker_url,
            CXR_QUEUE_NAME=self.queue,
            CXR_DATA_DIR=str(self.folder / "data"),
            CXR_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self._children:
            self._children.remove(proc)

    def listener(
        self, storage: Path, processes: int = 1, **extra: str
    ) -> tuple[subprocess.Popen[bytes], int]:
        """``cxr-triage listen`` on a free port with ``storage`` (``processes`` children
        sharing it; ``extra``: more environment); returns when every one listens."""
        port = free_port()
        env = self.env(
            CXR_DICOM_HOST="127.0.0.1",
            CXR_DICOM_PORT=str(port),
            CXR_STORAGE_URI=storage.as_uri(),
            CXR_MAX_ASSOCIATIONS="32",
            # every client is 127.0.0.1: the port probe below may still count as one of
            # its connections when k = 4 clients connect (default limit 4 per peer)
            CXR_MAX_ASSOCIATIONS_PER_PEER="32",
            CXR_LISTENER_PROCESSES=str(processes),
            **extra,
        )
        proc = self.spawn("listener", ["listen"], env)
        wait_for_port(port, proc)
        deadline = time.monotonic() + 120
        while listening_sockets(port) < processes:  # SO_REUSEPORT: one socket per child
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{processes} listener processes did not all start")
            time.sleep(0.05)
        return proc, port

    def worker(self, batch: int, storage: Path, **extra: str) -> subprocess.Popen[bytes]:
        env = self.env(
            CXR_BATCH_MAX_SIZE=str(batch), CXR_STORAGE_URI=storage.as_uri(), CXR_DEVICE="cpu"
        )
        env.update(extra)
        return self.spawn("worker", ["work"], env)

    def reset(self) -> None:
        """Empty the instance tables and this benchmark's queue."""
        import redis
        from sqlalchemy import text

        engine = self.engine()
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE predictions, instances, studies RESTART IDENTITY CASCADE"))
        engine.dispose()
        client = redis.Redis.from_url(self.broker_url)
        client.delete(self.queue, f"{self.queue}-urgent")  # both lanes (cxr_queue.lanes)
        client.close()

    def close(self) -> None:
        for proc in list(self._children):
            self.stop(proc)
        for fn in reversed(self._cleanup):
            with contextlib.suppress(Exception):
                fn()


@contextlib.contextmanager
def bench_services(folder: Path) -> Iterator[Bench]:
    """A :class:`Bench` on the configured servers (fresh database) or the embedded ones."""
    from sqlalchemy import create_engine, make_url, text

    from cxr_common.settings import normalise_database_url
    from migrations import upgrade_to_head

    admin = os.environ.get("CXR_DATABASE_URL")
    broker = os.environ.get("CXR_BROKER_URL")
    queue = f"cxr-bench-{uuid.uuid4().hex[:8]}"
    cleanup: list[Any] = []
    if admin and broker:
        name = f"cxr_bench_{uuid.uuid4().hex[:10]}"
        admin_url = normalise_database_url(admin)
        eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))

        def drop() -> None:
            with eng.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            eng.dispose()

        cleanup.append(drop)
        # the URL's database, not its last "/": a socket folder rides in the query
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    else:
        from cxr_triage.embedded import start_embedded

        embedded = start_embedded(folder / "embedded")
        cleanup.append(embedded.stop)
        url, broker = normalise_database_url(embedded.database_url), embedded.broker_url
    bench = Bench(url, broker, queue, folder, cleanup)
    try:
        upgrade_to_head(url)
        yield bench
    finally:
        bench.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_sockets(port: int) -> int:
    """TCP sockets in LISTEN on ``port`` (Linux ``/proc/net/tcp``; 1 where unreadable)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].rpartition(":")[2] == f"{port:04X}" and fields[3] == "0A":
                count += 1
    return count or 1


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout_s:.0f} s")


def wait_until_final(engine: Any, expected: int, timeout_s: float = 3600) -> None:
    """Poll until ``expected`` instances are in a final state (done, not eligible, failed)."""
    from cxr_db.instances import reads as instance_reads
    from cxr_db.instances.statuses import FINAL_STATUSES

    final = {s.value for s in FINAL_STATUSES}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = instance_reads.instance_statuses(engine)
        done = sum(1 for s in statuses.values() if s in final)
        if done >= expected:
            bad = [s for s in statuses.values() if s != "done"]
            if bad:
                raise RuntimeError(f"{len(bad)} instances not scored: {sorted(set(bad))}")
            return
        time.sleep(0.05)
    raise TimeoutError(f"{expected} instances not final within {timeout_s:.0f} s")


@dataclass(frozen=True)
class Timing:
    """Database timestamps (epoch seconds) of one scored instance."""

    received: float
    enqueued: float
    scored: float


def timings(engine: Any) -> dict[int, Timing]:
    """Instance id -> received (row inserted), enqueued (just before the C-STORE response)
    and scored (prediction written) times of every scored instance, by the database clock."""
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT i.id, extract(epoch FROM i.received_at), "
                "extract(epoch FROM i.enqueued_at), extract(epoch FROM p.created_at) "
                "FROM instances i JOIN predictions p ON p.instance_id = i.id"
            )
        ).all()
    return {int(r[0]): Timing(float(r[1]), float(r[2] or r[1]), float(r[3])) for r in rows}


def clear_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
