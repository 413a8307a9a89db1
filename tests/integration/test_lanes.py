"""Urgent lanes under a backlog (issue 19, part 3), with a real listener, Redis, Celery
worker and Postgres: urgent instances (calling AE title, STAT header) are scored before a
backlog queued ahead of them, the reconciler keeps the lane, and a normal instance is
still scored while urgent ones keep coming (the starvation bound)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from cxr_common.settings import ListenerSettings
from cxr_db.instances import writes as repo
from cxr_queue import Lane, make_celery
from cxr_queue.lanes import NORMAL_EVERY, lane_queue
from cxr_scheduler.reconciler import Reconciler
from cxr_triage.send import send_paths
from tests.conftest import Services
from tests.dicom_factory import TEST_ROOT, make_dataset, write
from tests.integration.conftest import wait_until_final

pytestmark = pytest.mark.integration

URGENT_AE = "ED_DX"


@pytest.fixture
def lane_listener(services: Services, engine: Engine) -> Iterator[int]:
    """A real listener whose urgent calling AE title is ``ED_DX``; yields its port."""
    from dicom_listener.server import start_listener

    settings = ListenerSettings(
        database_url=services.database_url,
        broker_url=services.broker_url,
        queue_name=services.queue_name,
        results_queue_name=f"{services.queue_name}-results",
        data_dir=services.data_dir,
        storage_uri=(services.data_dir / "instances").as_uri(),
        dicom_host="127.0.0.1",
        dicom_port=0,
        urgent_calling_ae_titles=[URGENT_AE],
    )
    handle = start_listener(settings, engine, make_celery(services.broker_url, services.queue_name))
    yield handle.port
    handle.shutdown()


@pytest.fixture
def clean(services: Services, engine: Engine) -> Iterator[redis.Redis]:
    """No rows and empty lanes before and after (the session's database is shared)."""
    client = redis.Redis.from_url(services.broker_url)
    lanes = [lane_queue(services.queue_name, lane) for lane in Lane]

    def wipe() -> None:
        client.delete(*lanes)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE predictions, instances, studies RESTART IDENTITY CASCADE"))

    wipe()
    yield client
    wipe()
    client.close()


def _files(folder: Path, n: int, prefix: str, **attrs: str) -> list[Path]:
    paths = []
    for i in range(n):
        ds = make_dataset()
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        paths.append(write(ds, folder / f"{prefix}{i}.dcm"))
    return paths


def _send(paths: list[Path], port: int, calling_ae: str = "WARD_DX") -> None:
    report = send_paths(paths, "127.0.0.1", port, calling_ae=calling_ae, progress=False)
    assert report.sent == len(paths)
    assert report.failed == 0


def _scored_order(engine: Engine) -> list[tuple[str, str | None, str]]:
    """(lane, calling AE title, SOP Instance UID) of each scored instance, in the order of
    the predictions' write times."""
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT i.lane, i.calling_ae_title, i.sop_instance_uid FROM instances i "
                "JOIN predictions p ON p.instance_id = i.id ORDER BY p.created_at, i.id"
            )
        ).all()
    return [(r.lane, r.calling_ae_title, r.sop_instance_uid) for r in rows]


def test_urgent_ae_and_stat_instances_sent_after_a_backlog_are_scored_before_it(
    engine: Engine,
    clean: redis.Redis,
    services: Services,
    lane_listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
) -> None:
    backlog = _files(tmp_path, 16, "backlog-")
    _send(backlog, lane_listener)
    _send(_files(tmp_path, 1, "ed-"), lane_listener, calling_ae=URGENT_AE)
    _send(_files(tmp_path, 1, "stat-", RequestedProcedurePriority="STAT"), lane_listener)
    assert clean.llen(lane_queue(services.queue_name, Lane.URGENT)) == 2
    assert clean.llen(lane_queue(services.queue_name, Lane.NORMAL)) == 16
    # The worker starts with every job queued: first in, first out would score the two
    # last ones after all 16.
    start_worker(batch_size=4, wait_ms=500, log=tmp_path / "worker.log")
    wait_until_final(engine, 18)
    order = _scored_order(engine)
    assert len(order) == 18
    urgent_at = [i for i, (lane, _, _) in enumerate(order) if lane == Lane.URGENT]
    # the AE title's, the header's (one batch: their write order is not defined)
    assert sorted(order[i][1] or "" for i in urgent_at) == [URGENT_AE, "WARD_DX"]
    # Both are scored within the worker's first pull (8 jobs in flight: batch 4 x 2), the
    # backlog after them.
    assert max(urgent_at) < 8
    assert sum(1 for lane, _, _ in order if lane == Lane.NORMAL) == 16


def test_a_normal_instance_is_scored_while_urgent_ones_keep_coming(
    engine: Engine,
    clean: redis.Redis,
    services: Services,
    lane_listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
) -> None:
    _send(_files(tmp_path, 1, "ward-"), lane_listener)
    _send(_files(tmp_path, 3 * NORMAL_EVERY, "ed-"), lane_listener, calling_ae=URGENT_AE)
    # one job at a time, so the order of the pulls is the order of the scores
    start_worker(
        batch_size=1, wait_ms=0, log=tmp_path / "worker.log", extra_env={"CXR_CONCURRENCY": "1"}
    )
    wait_until_final(engine, 3 * NORMAL_EVERY + 1)
    lanes = [lane for lane, _, _ in _scored_order(engine)]
    # After NORMAL_EVERY - 1 urgent jobs in a row the normal lane is pulled first.
    assert lanes.index(Lane.NORMAL) == NORMAL_EVERY - 1
    assert lanes.count(Lane.URGENT) == 3 * NORMAL_EVERY


def _record(engine: Engine, name: str, lane: Lane) -> int:
    return repo.record_instance(
        engine,
        repo.InstanceRecord(
            study_instance_uid=f"{TEST_ROOT}19",
            sop_instance_uid=f"{TEST_ROOT}19.{name}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
            series_instance_uid=None,
            transfer_syntax_uid=None,
            accession_number=None,
            modality="CR",
            body_part=None,
            view_position=None,
            calling_ae_title=None,
            storage_uri=f"file:///nowhere/{name}.dcm",
            size_bytes=1,
            lane=lane,
        ),
    ).instance_id


def _ids_in(client: redis.Redis, queue: str) -> list[int]:
    """Instance ids of the scoring jobs waiting in ``queue``."""
    ids = []
    for raw in client.lrange(queue, 0, -1):
        _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(int(kwargs["job"]["instance_id"]))
    return sorted(ids)


def test_the_reconciler_re_enqueues_into_the_lane_the_row_was_recorded_with(
    engine: Engine, clean: redis.Redis, services: Services
) -> None:
    app = make_celery(services.broker_url, services.queue_name)
    reconciler = Reconciler(engine, app, services.queue_name, 3600, 0)
    urgent = _record(engine, "u", Lane.URGENT)
    normal = _record(engine, "n", Lane.NORMAL)
    urgent_q = lane_queue(services.queue_name, Lane.URGENT)
    normal_q = lane_queue(services.queue_name, Lane.NORMAL)
    assert reconciler.run_once() == 2  # never enqueued (the broker was down)
    assert _ids_in(clean, urgent_q) == [urgent]
    assert _ids_in(clean, normal_q) == [normal]
    assert reconciler.run_once() == 0  # both are waiting in their lanes: not orphans
    clean.delete(urgent_q, normal_q)  # Redis came back empty
    assert reconciler.run_once() == 2
    assert _ids_in(clean, urgent_q) == [urgent]
    assert _ids_in(clean, normal_q) == [normal]
