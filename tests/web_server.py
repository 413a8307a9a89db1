"""Helpers for the web worklist tests: a real uvicorn server in a thread, and seed rows."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from PIL import Image
from sqlalchemy import Engine

from cxr_db import repository as repo
from tests.db_rows import prediction, record
from worklist.app import create_app


@contextmanager
def serve(engine: Engine, timeout_s: float = 30.0) -> Iterator[str]:
    """Run the worklist app with uvicorn on a free loopback port; yield its base URL."""
    config = uvicorn.Config(
        create_app(engine), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout_s)
            raise AssertionError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        assert not thread.is_alive(), "uvicorn did not stop"


def heatmap_png(seed: int) -> bytes:
    """A small but real PNG: a grey gradient with a warm blob, like an overlay."""
    img = Image.new("RGB", (128, 128))
    for y in range(128):
        for x in range(128):
            d = ((x - 40 - seed * 10) ** 2 + (y - 60) ** 2) ** 0.5
            heat = max(0, 255 - int(d * 5))
            grey = (x + y) // 2
            img.putpixel((x, y), (min(255, grey + heat), grey + heat // 4, max(0, grey - heat)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Seeded:
    """Study Instance UIDs of the seeded worklist, in the order the worklist must show."""

    order: tuple[str, ...]
    flagged_top: str
    flagged_top_sop: str
    failed_reason: str
    not_eligible_reason: str


def _record(engine: Engine, study: str, sop: str, accession: str | None) -> int:
    return record(engine, study, sop, accession)


def _prediction(p: float, png: bytes) -> repo.PredictionRecord:
    return prediction(p, threshold=0.42, png=png, version="2026.11-cal1")


def seed_worklist(engine: Engine) -> Seeded:
    """Six studies: two flagged, one failed, one not eligible, one pending, one routine."""
    failed_reason = "could not decode pixel data: truncated JPEG 2000 stream"
    not_eligible_reason = "lateral view: not a frontal chest radiograph"
    routine = _record(engine, "1.2.826.0.1.7.1", "1.2.826.0.1.7.1.1", "ACC-1001")
    repo.record_prediction(engine, routine, _prediction(0.204, heatmap_png(1)))
    top = _record(engine, "1.2.826.0.1.7.2", "1.2.826.0.1.7.2.1", "ACC-1002")
    repo.record_prediction(engine, top, _prediction(0.912, heatmap_png(2)))
    failed = _record(engine, "1.2.826.0.1.7.3", "1.2.826.0.1.7.3.1", "ACC-1003")
    repo.record_failed(engine, failed, failed_reason)
    lateral = _record(engine, "1.2.826.0.1.7.4", "1.2.826.0.1.7.4.1", "ACC-1004")
    repo.record_not_eligible(engine, lateral, not_eligible_reason)
    _record(engine, "1.2.826.0.1.7.5", "1.2.826.0.1.7.5.1", None)
    second = _record(engine, "1.2.826.0.1.7.6", "1.2.826.0.1.7.6.1", "ACC-1006")
    repo.record_prediction(engine, second, _prediction(0.655, heatmap_png(3)))
    return Seeded(
        order=(
            "1.2.826.0.1.7.2",
            "1.2.826.0.1.7.6",
            "1.2.826.0.1.7.3",
            "1.2.826.0.1.7.4",
            "1.2.826.0.1.7.5",
            "1.2.826.0.1.7.1",
        ),
        flagged_top="1.2.826.0.1.7.2",
        flagged_top_sop="1.2.826.0.1.7.2.1",
        failed_reason=failed_reason,
        not_eligible_reason=not_eligible_reason,
    )
