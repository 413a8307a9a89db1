#!/usr/bin/env python3
"""Full-size worker, queue and database fault runs (issue 12); figures for RELIABILITY.md.

    python scripts/reliability_worker_faults.py kill9      # 500 instances, 10 x kill -9
    python scripts/reliability_worker_faults.py postgres   # 500 instances, Postgres down 60 s
    python scripts/reliability_worker_faults.py redis      # 500 instances, Redis down 60 s,
                                                           # back EMPTY, during the send
    python scripts/reliability_worker_faults.py poison     # each poison file on a fresh
                                                           # worker: status, reason, VmHWM
    python scripts/reliability_worker_faults.py all --instances 100 --outage 20 --kills 3

Real processes throughout: a C-STORE listener with its reconciler (in this process), two
``cxr-triage work`` supervisors (each running one worker child), a throwaway Redis and an
embedded Postgres in a temp folder (nothing touches a shared server). Leases and passes
are the defaults but shorter where a test needs to watch them (lease 20 s, renewal 5 s,
reconciler every 10 s, grace 15 s: the production defaults). Prints one line per run:

    tried / acknowledged / final / lost / duplicated / crashed, time to recover

``lost``: acknowledged but not recorded, or recorded but not final at the end;
``duplicated``: predictions beyond one per instance; ``crashed``: worker processes that
died other than by our kill -9 (their supervisor restarted them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_db import make_engine  # noqa: E402
from cxr_triage.send import send_paths  # noqa: E402
from tests.dicom_factory import chest_like, make_dataset, write  # noqa: E402
from tests.faults import (  # noqa: E402
    OwnPostgres,
    OwnRedis,
    Workers,
    all_final,
    counts,
    held_by,
    listener_settings,
    running_listener,
    wait_for,
    worker_children,
    worker_env,
)

PRODUCTION_TIMING = {"reconcile_interval_s": 10.0, "reconcile_grace_s": 15.0}
WORKER_ENV = {
    "CXR_LEASE_TTL_S": "20",
    "CXR_LEASE_RENEW_S": "5",
    "CXR_BATCH_MAX_SIZE": "4",
    "CXR_BATCH_MAX_WAIT_MS": "250",
}


def _files(folder: Path, n: int, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write(make_dataset(chest_like(96), accession=f"{prefix}{i:05d}"), folder / f"{i}.dcm")
        for i in range(n)
    ]


def _pids_seen(pool: Workers, seen: set[int], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        for sup in pool.procs:
            seen.update(worker_children(sup))


def _summary(
    name: str,
    engine: object,
    tried: int,
    acked: int,
    seen: set[int],
    kills: int,
    supervisors: int,
    recover_s: float,
    extra: dict[str, object],
) -> dict[str, object]:
    c = counts(engine)  # type: ignore[arg-type]
    recorded = sum(v for k, v in c.items() if k not in ("predictions", "predicted"))
    final = sum(c.get(s, 0) for s in ("done", "not_eligible", "failed"))
    row = {
        "run": name,
        "tried": tried,
        "acknowledged": acked,
        "final": final,
        "lost": (acked - recorded) + (recorded - final),
        "duplicated": c["predictions"] - c["predicted"],
        "crashed": max(len(seen) - supervisors - kills, 0),
        "kills": kills,
        "recover_s": round(recover_s, 1),
        "statuses": {k: v for k, v in c.items() if k not in ("predictions", "predicted")},
        **extra,
    }
    print(json.dumps(row), flush=True)  # noqa: T201 - a script reports on stdout
    return row


def run_kill9(base: Path, n: int, kills: int, redis_url: str, db_url: str) -> dict[str, object]:
    engine = make_engine(db_url)
    queue = f"rel-kill9-{uuid.uuid4().hex[:6]}"
    settings = listener_settings(db_url, redis_url, queue, base / "data")
    pool = Workers(worker_env(db_url, redis_url, queue, base / "data") | WORKER_ENV, base)
    seen: set[int] = set()
    stop = threading.Event()
    recover: list[float] = []
    files = _files(base / "in", n, "K")
    sent: list[int] = []
    try:
        with running_listener(settings, engine, PRODUCTION_TIMING) as port:
            # Sent while the workers run and die, so that there is work to hold at each kill.
            sender = threading.Thread(
                target=lambda: sent.append(
                    send_paths(files, "127.0.0.1", port, progress=False).sent
                )
            )
            sender.start()
            for _ in range(2):
                pool.start()
            threading.Thread(target=_pids_seen, args=(pool, seen, stop), daemon=True).start()
            rng = random.Random(12)
            for k in range(kills):
                # kill k + 1 once (k + 1) / (kills + 2) of the run is scored
                milestone = (k + 1) * n // (kills + 2)
                wait_for(
                    f"{milestone} scored",
                    lambda m=milestone: counts(engine).get("done", 0) >= m,
                    1800,
                    pool.alive,
                )
                holders: dict[int, list[int]] = {}

                def holding(holders: dict[int, list[int]] = holders) -> bool:
                    holders.update(held_by(engine))
                    return bool(holders)

                wait_for("a worker holding jobs", holding, 600, pool.alive)
                pid = rng.choice(sorted(holders))
                held = holders[pid]
                os.kill(pid, signal.SIGKILL)
                t0 = time.monotonic()

                def back(held: list[int] = held, pid: int = pid) -> bool:
                    from sqlalchemy import text

                    with engine.begin() as conn:
                        rows = conn.execute(
                            text("SELECT status, lease_owner FROM instances WHERE id = ANY(:i)"),
                            {"i": held},
                        ).all()
                    return all(
                        r.status in ("done", "not_eligible", "failed")
                        or (r.status == "processing" and not str(r.lease_owner).endswith(f":{pid}"))
                        for r in rows
                    )

                wait_for(f"kill {k + 1}: held jobs back in work", back, 300, pool.alive)
                recover.append(time.monotonic() - t0)
                took = f"{recover[-1]:.1f} s"
                print(f"kill {k + 1}: {len(held)} held job(s) back in {took}", flush=True)  # noqa: T201
            sender.join()
            wait_for("all final", lambda: all_final(engine, n), 1800, pool.alive)
        return _summary(
            f"kill -9 x{kills}",
            engine,
            n,
            sent[0],
            seen,
            kills,
            2,
            max(recover, default=0.0),
            {"recover_each_s": [round(r, 1) for r in recover]},
        )
    finally:
        stop.set()
        pool.stop()
        engine.dispose()


def run_postgres(base: Path, n: int, outage_s: float, redis_url: str) -> dict[str, object]:
    pg = OwnPostgres(base / "pg")
    pg.migrate()
    engine = make_engine(pg.url)
    queue = f"rel-pg-{uuid.uuid4().hex[:6]}"
    settings = listener_settings(pg.url, redis_url, queue, base / "data")
    pool = Workers(worker_env(pg.url, redis_url, queue, base / "data") | WORKER_ENV, base)
    seen: set[int] = set()
    stop = threading.Event()
    try:
        with running_listener(settings, engine, PRODUCTION_TIMING) as port:
            report = send_paths(_files(base / "in", n, "P"), "127.0.0.1", port, progress=False)
            for _ in range(2):
                pool.start()
            threading.Thread(target=_pids_seen, args=(pool, seen, stop), daemon=True).start()
            wait_for(
                "scoring under way",
                lambda: counts(engine).get("done", 0) >= n // 10,
                900,
                pool.alive,
            )
            done_before = counts(engine).get("done", 0)
            pg.stop()
            time.sleep(outage_s)  # the outage itself
            pg.start()
            t0 = time.monotonic()
            wait_for("all final", lambda: all_final(engine, n), 1800, pool.alive)
            recover = time.monotonic() - t0
        return _summary(
            f"Postgres down {outage_s:.0f} s",
            engine,
            n,
            report.sent,
            seen,
            0,
            2,
            recover,
            {"done_before_outage": done_before},
        )
    finally:
        stop.set()
        pool.stop()
        engine.dispose()
        pg.close()


def run_redis(base: Path, n: int, outage_s: float, db_url: str) -> dict[str, object]:
    server = OwnRedis(base / "redis")
    server.start()
    engine = make_engine(db_url)
    queue = f"rel-redis-{uuid.uuid4().hex[:6]}"
    settings = listener_settings(db_url, server.url, queue, base / "data")
    pool = Workers(worker_env(db_url, server.url, queue, base / "data") | WORKER_ENV, base)
    seen: set[int] = set()
    stop = threading.Event()
    files = _files(base / "in", n, "R")
    sent: list[int] = []
    try:
        with running_listener(settings, engine, PRODUCTION_TIMING) as port:
            for _ in range(2):
                pool.start()
            threading.Thread(target=_pids_seen, args=(pool, seen, stop), daemon=True).start()
            sender = threading.Thread(
                target=lambda: sent.append(
                    send_paths(files, "127.0.0.1", port, progress=False).sent
                )
            )
            sender.start()
            wait_for(
                "scoring under way",
                lambda: counts(engine).get("done", 0) >= n // 10,
                900,
                pool.alive,
            )
            server.kill()  # SIGKILL, no persistence: it comes back empty
            time.sleep(outage_s)  # the outage itself; the sender keeps sending
            server.start()
            t0 = time.monotonic()
            sender.join()
            wait_for("all final", lambda: all_final(engine, n), 1800, pool.alive)
            recover = time.monotonic() - t0
        return _summary(
            f"Redis down {outage_s:.0f} s, back empty", engine, n, sent[0], seen, 0, 2, recover, {}
        )
    finally:
        stop.set()
        pool.stop()
        engine.dispose()
        server.kill()


def run_poison(base: Path, redis_url: str, db_url: str) -> list[dict[str, object]]:
    """Each poison file alone on a fresh worker: its status, reason and the worker's peak
    resident set (VmHWM, model loaded included); a normal image for comparison."""
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import generate_uid
    from sqlalchemy import text

    from cxr_common.storage import instance_key, open_storage
    from cxr_db.instances import writes as repo
    from cxr_queue import ScoreJob, enqueue_score, make_celery
    from tests import poison
    from tests.faults import peak_rss_bytes

    d = base / "files"
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "normal 128 x 128 DX": write(poison.dx_dataset(chest_like(128)), d / "ok.dcm"),
        "deflate bomb (1 GiB of zeros, honest 32768 x 32768)": poison.deflate_bomb(d / "d1.dcm"),
        "deflate bomb (1 GiB, header says 64 x 64)": poison.deflate_bomb(
            d / "d2.dcm", rows=64, columns=64
        ),
        "deflate bomb (1 GiB in a private element)": poison.deflate_bomb(
            d / "d3.dcm", where="private"
        ),
        "RLE 20000 x 20000": poison.rle_bomb(d / "r.dcm"),
        "RLE 8000 x 8000 (allowed, all zeros)": poison.rle_bomb(
            d / "r8.dcm", rows=8000, columns=8000
        ),
        "truncated Pixel Data": poison.truncated_pixel_data(d / "t.dcm"),
        "file cut mid-pixels": poison.truncated_pixel_data(d / "t2.dcm", cut_file=True),
        "0-length Pixel Data": poison.zero_length_pixel_data(d / "z.dcm"),
        "Rows 65535 x Columns 65535": poison.absurd_dimensions(
            d / "a.dcm", Rows=65535, Columns=65535
        ),
        "NumberOfFrames 100000": poison.absurd_dimensions(d / "f.dcm", NumberOfFrames=100000),
        "blank frame": poison.blank_frame(d / "b.dcm"),
        "constant frame": poison.constant_frame(d / "c.dcm"),
    }
    engine = make_engine(db_url)
    storage = open_storage((base / "data" / "instances").as_uri())
    rows = []
    try:
        for name, path in files.items():
            queue = f"rel-poison-{uuid.uuid4().hex[:6]}"
            meta = read_file_meta_info(path)
            sop, study = str(meta.MediaStorageSOPInstanceUID), generate_uid()
            key = instance_key(study, sop)
            storage.put_file(key, path)
            rec = repo.record_instance(
                engine,
                repo.InstanceRecord(
                    study,
                    sop,
                    str(meta.MediaStorageSOPClassUID),
                    None,
                    str(meta.TransferSyntaxUID),
                    None,
                    "DX",
                    "CHEST",
                    "PA",
                    None,
                    storage.uri(key),
                    0,
                ),
            )
            enqueue_score(
                make_celery(redis_url, queue),
                ScoreJob(
                    instance_id=rec.instance_id, sop_instance_uid=sop, storage_uri=storage.uri(key)
                ),
                queue,
            )
            repo.mark_enqueued(engine, rec.instance_id)
            pool = Workers(worker_env(db_url, redis_url, queue, base / "data") | WORKER_ENV, base)
            try:
                sup = pool.start(CXR_RESTART_ON_EXIT="false")  # the process itself: VmHWM
                t0 = time.monotonic()

                def final(i: int = rec.instance_id) -> bool:
                    with engine.begin() as conn:
                        st = conn.execute(
                            text("SELECT status FROM instances WHERE id = :i"), {"i": i}
                        ).scalar_one()
                    return str(st) in ("done", "not_eligible", "failed")

                wait_for(name, final, 600, pool.alive)
                peak = peak_rss_bytes(sup.pid)
                with engine.begin() as conn:
                    st, reason, attempts = conn.execute(
                        text("SELECT status, reason, attempts FROM instances WHERE id = :i"),
                        {"i": rec.instance_id},
                    ).one()
            finally:
                pool.stop()
            row = {
                "file": name,
                "on_disk_bytes": (base / "data" / "instances" / key).stat().st_size,
                "status": str(st),
                "attempts": attempts,
                "worker_peak_rss_mib": round(peak / 2**20),
                "seconds": round(time.monotonic() - t0, 1),
                "reason": reason,
            }
            print(json.dumps(row), flush=True)  # noqa: T201 - a script reports on stdout
            rows.append(row)
    finally:
        engine.dispose()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=["kill9", "postgres", "redis", "poison", "all"])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--outage", type=float, default=60.0)
    args = parser.parse_args()
    # SIGTERM ends the run through the finally blocks: workers, Redis, Postgres stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-reliability-") as tmp:
        base = Path(tmp)
        pg = OwnPostgres(base / "shared-pg")
        pg.migrate()
        redis_server = OwnRedis(base / "shared-redis")
        redis_server.start()
        try:
            if args.scenario in ("kill9", "all"):
                rows.append(
                    run_kill9(base / "kill9", args.instances, args.kills, redis_server.url, pg.url)
                )
            if args.scenario in ("postgres", "all"):
                rows.append(
                    run_postgres(base / "postgres", args.instances, args.outage, redis_server.url)
                )
            if args.scenario == "poison":
                run_poison(base / "poison", redis_server.url, _fresh_db(pg))
            if args.scenario in ("redis", "all"):
                # its own database: a fresh run on the same Postgres server
                rows.append(run_redis(base / "redis", args.instances, args.outage, _fresh_db(pg)))
        finally:
            redis_server.kill()
            pg.close()
    bad = [r for r in rows if r["lost"] or r["duplicated"]]
    return 1 if bad else 0


def _fresh_db(pg: OwnPostgres) -> str:
    from sqlalchemy import create_engine, text

    from migrations import upgrade_to_head

    name = f"rel_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base, _, query = pg.url.partition("?")
    url = f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    upgrade_to_head(url)
    return url


if __name__ == "__main__":
    sys.exit(main())
