"""What one ``/metrics`` scrape and one ``cxr-triage stats`` cost as the tables grow.

    python -m bench.scrape_cost [--rows 100000] [--repeats 3] [--server postgresql://postgres@127.0.0.1:5432]

Creates a scratch database on ``--server`` (dropped afterwards), migrates it, writes
``--rows`` studies of one scored instance each (a fifth flagged, half answered) with
``generate_series``, then times :func:`cxr_db.instances.stats.read_snapshot` (the database
part of a scrape: all-time histograms included) and :func:`cxr_db.reading.stats.read_stats`
(24 h and 7 d windows), median of ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from sqlalchemy import create_engine, text

from cxr_db.instances.stats import read_snapshot
from cxr_db.reading.stats import read_stats
from migrations import upgrade_to_head

SEED = [
    "ALTER TABLE instances DISABLE TRIGGER USER",
    """INSERT INTO studies (id, study_instance_uid, flagged, first_received_at)
       SELECT g, '2.25.' || g, g % 5 = 0, now() - make_interval(secs => g * 20)
       FROM generate_series(1, :n) g""",
    """INSERT INTO instances (id, study_id, sop_instance_uid, sop_class_uid, storage_uri,
       size_bytes, status, received_at)
       SELECT g, g, '2.25.' || g || '.1', '1.2', 'file:///x', 1, 'done',
              now() - make_interval(secs => g * 20)
       FROM generate_series(1, :n) g""",
    """INSERT INTO predictions (instance_id, model_name, model_version, weights_sha256, logit,
       probability, threshold, flagged, device, batch_size, decode_ms, inference_ms,
       worker_id, created_at)
       SELECT g, 'm', 'v', 'x', 0, 0.5, 0.5, g % 5 = 0, 'cpu', 1, 40, 700, 'bench:1',
              now() - make_interval(secs => g * 20 - 5)
       FROM generate_series(1, :n) g""",
    "INSERT INTO users (id, username, role, password_hash) VALUES (1, 'b', 'radiologist', 'x')",
    """INSERT INTO answers (study_id, user_id, finding, created_at)
       SELECT g, 1, 'other', now() - make_interval(secs => g * 20 - 1800)
       FROM generate_series(1, :n) g WHERE g % 2 = 0""",
    "ALTER TABLE instances ENABLE TRIGGER USER",
    "ANALYZE",
]


def _median_s(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args(argv)
    server = args.server.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"bench_scrape_{os.getpid()}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        upgrade_to_head(f"{server}/{name}")
        engine = create_engine(f"{server}/{name}")
        with engine.begin() as conn:
            for statement in SEED:
                conn.execute(text(statement), {"n": args.rows})
        snapshot = _median_s(lambda: read_snapshot(engine), args.repeats)
        stats = _median_s(lambda: read_stats(engine), args.repeats)
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
    print(f"rows={args.rows} read_snapshot={snapshot:.3f}s read_stats={stats:.3f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
