"""Leases, attempts, the reconciler's sweeps and ``cxr-triage requeue`` against real
Postgres and Redis (issue 12; no worker process: the rows are driven directly)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, text

from cxr_db.instances import writes as repo
from cxr_db.instances.writes import ClaimState
from cxr_queue import make_celery
from cxr_scheduler.reconciler import Reconciler
from tests.conftest import Services
from tests.dicom_factory import TEST_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(services: Services) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.broker_url)
    client.delete(services.queue_name)
    yield client
    client.delete(services.queue_name)
    client.close()


def _record(engine: Engine, n: int, study: str = "7") -> list[int]:
    ids = []
    for i in range(n):
        result = repo.record_instance(
            engine,
            repo.InstanceRecord(
                study_instance_uid=f"{TEST_ROOT}{study}",
                sop_instance_uid=f"{TEST_ROOT}{study}.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                series_instance_uid=None,
                transfer_syntax_uid=None,
                accession_number=None,
                modality="CR",
                body_part=None,
                view_position=None,
                calling_ae_title=None,
                storage_uri=f"file:///nowhere/{study}/{i}.dcm",
                size_bytes=1,
            ),
        )
        ids.append(result.instance_id)
    return ids


def _sop(instance_id: int, engine: Engine) -> str:
    with engine.begin() as conn:
        return str(
            conn.execute(
                text("SELECT sop_instance_uid FROM instances WHERE id = :i"), {"i": instance_id}
            ).scalar_one()
        )


def _claim(engine: Engine, instance_id: int, owner: str, max_attempts: int = 3) -> repo.Claim:
    return repo.claim_instance(
        engine,
        instance_id,
        _sop(instance_id, engine),
        owner=owner,
        lease_s=30,
        max_attempts=max_attempts,
    )


def _expire(engine: Engine, instance_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE instances SET lease_expires_at = now() - interval '1 s' WHERE id = :i"),
            {"i": instance_id},
        )


def _row(engine: Engine, instance_id: int) -> tuple[str, int, str | None]:
    with engine.begin() as conn:
        r = conn.execute(
            text("SELECT status, attempts, lease_owner FROM instances WHERE id = :i"),
            {"i": instance_id},
        ).one()
    return str(r.status), int(r.attempts), r.lease_owner


def _queued_ids(queue: redis.Redis, name: str) -> list[int]:
    ids = []
    for raw in queue.lrange(name, 0, -1):
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(int(kwargs["job"]["instance_id"]))
    return sorted(ids)


def test_one_lease_at_a_time_and_anyone_may_reclaim_an_expired_one(engine: Engine) -> None:
    (i,) = _record(engine, 1)
    assert _claim(engine, i, "host:1").state is ClaimState.CLAIMED
    assert _claim(engine, i, "host:2").state is ClaimState.BUSY  # a duplicate message
    again = _claim(engine, i, "host:1")  # a retry in the same process: no new attempt
    assert (again.state, again.attempts) == (ClaimState.CLAIMED, 1)
    assert repo.renew_leases(engine, "host:2", [i], 30) == set()  # not its lease
    assert repo.renew_leases(engine, "host:1", [i], 30) == {i}
    _expire(engine, i)  # host:1 died
    taken = _claim(engine, i, "host:2")
    assert (taken.state, taken.attempts) == (ClaimState.CLAIMED, 2)
    assert repo.renew_leases(engine, "host:1", [i], 30) == set()  # it lost the lease
    repo.mark_decoded(engine, i, "host:2")
    assert _row(engine, i) == ("processing", 1, "host:2")
    repo.record_failed(engine, i, "x")
    assert _row(engine, i) == ("failed", 1, None)
    assert _claim(engine, i, "host:3").state is ClaimState.FINAL


def test_a_claim_given_back_for_a_retry_is_not_an_attempt(engine: Engine) -> None:
    (i,) = _record(engine, 1)
    _claim(engine, i, "host:1")
    assert repo.release_claim(engine, i, "host:1")
    assert _row(engine, i) == ("queued", 0, None)
    assert not repo.release_claim(engine, i, "host:1")  # no longer held


def test_the_claim_after_max_attempts_deaths_fails_the_file_with_what_to_do(
    engine: Engine,
) -> None:
    (i,) = _record(engine, 1, study="99")
    for owner in ("a:1", "b:2", "c:3"):
        assert _claim(engine, i, owner, max_attempts=3).state is ClaimState.CLAIMED
        _expire(engine, i)  # each worker died while decoding it
    last = _claim(engine, i, "d:4", max_attempts=3)
    assert last.state is ClaimState.EXHAUSTED
    assert last.reason is not None
    assert "stopped 3 times" in last.reason
    assert f"cxr-triage requeue --study {TEST_ROOT}99" in last.reason
    assert _row(engine, i) == ("failed", 3, None)
    assert _claim(engine, i, "e:5").state is ClaimState.FINAL  # never loops


def test_reconciler_re_enqueues_queued_rows_the_broker_lost_once(
    engine: Engine, queue: redis.Redis, services: Services
) -> None:
    """Defect 1b: Redis restarted empty. Rows with a waiting message are left alone."""
    app = make_celery(services.broker_url, services.queue_name)
    reconciler = Reconciler(engine, app, services.queue_name, 3600, 0)
    ids = _record(engine, 3)
    assert reconciler.run_once() == 3  # received → published → queued
    assert reconciler.run_once() == 0  # each has its waiting message
    queue.delete(services.queue_name)  # Redis came back without them
    assert reconciler.run_once() == 3
    assert reconciler.run_once() == 0
    assert _queued_ids(queue, services.queue_name) == sorted(ids)


def test_reconciler_re_enqueues_expired_leases_and_leaves_live_ones(
    engine: Engine, queue: redis.Redis, services: Services
) -> None:
    app = make_celery(services.broker_url, services.queue_name)
    reconciler = Reconciler(engine, app, services.queue_name, 3600, 0)
    live, dead = _record(engine, 2)
    for i in (live, dead):
        repo.mark_enqueued(engine, i)
        _claim(engine, i, f"host:{i}")
    _expire(engine, dead)
    assert reconciler.run_once() == 1
    assert _queued_ids(queue, services.queue_name) == [dead]
    assert _row(engine, dead) == ("queued", 1, None)  # the dead claim still counts
    assert _row(engine, live)[0] == "processing"
    assert reconciler.run_once() == 0


def test_two_reconcilers_at_once_publish_each_row_once(
    engine: Engine, queue: redis.Redis, services: Services
) -> None:
    """Several listeners: the SKIP LOCKED pick and the stamp keep them apart for a grace
    period (with no grace at all, a second pass may rightly see a fresh row as lost)."""
    ids = _record(engine, 60)
    with engine.begin() as conn:
        conn.execute(text("UPDATE instances SET received_at = now() - interval '1 minute'"))
    apps = [make_celery(services.broker_url, services.queue_name) for _ in range(2)]
    reconcilers = [Reconciler(engine, app, services.queue_name, 3600, 10) for app in apps]
    gate = threading.Barrier(2)
    published: list[int] = []

    def run(r: Reconciler) -> None:
        gate.wait()
        published.append(r.run_once())

    threads = [threading.Thread(target=run, args=(r,)) for r in reconcilers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(published) == 60
    assert _queued_ids(queue, services.queue_name) == sorted(ids)


def _cli(services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxr_triage", "requeue", *args],
        env=services.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_requeue_command_puts_failed_instances_back_with_attempts_reset(
    engine: Engine, queue: redis.Redis, services: Services
) -> None:
    failed, scored_elsewhere = _record(engine, 2, study="42")
    (other,) = _record(engine, 1, study="43")
    for i in (failed, other):
        _claim(engine, i, "host:1")
        repo.record_failed(engine, i, "a worker stopped 3 times ...")
    assert _cli(services).returncode == 2  # neither --study nor --failed

    dry = _cli(services, "--study", f"{TEST_ROOT}42", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would be requeued" in dry.stdout
    assert f"{TEST_ROOT}42.0" in dry.stdout
    assert _row(engine, failed)[0] == "failed"  # nothing changed

    done = _cli(services, "--study", f"{TEST_ROOT}42")
    assert done.returncode == 0, done.stderr
    # the failed one and the study's never-enqueued one; not the other study's
    assert _queued_ids(queue, services.queue_name) == sorted([failed, scored_elsewhere])
    assert _row(engine, failed) == ("queued", 0, None)
    assert _row(engine, other)[0] == "failed"

    assert _cli(services, "--failed").returncode == 0
    assert _row(engine, other) == ("queued", 0, None)
    assert _cli(services, "--study", f"{TEST_ROOT}404").returncode == 1


def test_every_database_wait_is_bounded(engine: Engine) -> None:
    """Defect 8: statement and lock waits end (the engine's connect options)."""
    with engine.begin() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "1min"
        assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "10s"
