"""Prometheus metrics against real Postgres, Redis, a DICOM association, a worker process and
uvicorn: the pipeline collector's numbers from rows we write, the queue depth from a real
Redis list, the listener's and a worker's own ports, and ``/metrics`` behind its token."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from prometheus_client import generate_latest
from pydantic import SecretStr
from pynetdicom import AE
from sqlalchemy import Engine, text

import cxr_model
from cxr_common import metrics as m
from cxr_common.settings import ListenerSettings
from cxr_db import drift
from cxr_db.audit.store import Actor
from cxr_db.audit.tables import ActorKind
from cxr_db.instances import writes as repo
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.registry import store as models
from cxr_db.registry.store import NewModel
from cxr_model import WEIGHTS_DIR
from cxr_model.contract import read_contract
from cxr_queue import make_celery
from dicom_listener.server import start_listener
from tests.conftest import Services
from tests.db_rows import prediction, record
from tests.dicom_factory import TEST_ROOT, make_dataset
from tests.integration.conftest import wait_until_final
from tests.metrics_scrape import Scrape, fetch, parse, poll
from tests.support import free_port, thread_running, wait_until
from worklist.metrics_route import metrics_registry, metrics_router, scrape_token, scrape_token_or

pytestmark = pytest.mark.integration

TOKEN = "scrape-token-0123456789abcdef"
PATIENT_NAME = "DOE^JANE"
ACCESSION = "ACC-METRICS-7"

#: Label values of ours that come from a fixed set.
REASONS = {
    *m.reason_categories(m.FAILED_REASON_PATTERNS),
    *m.reason_categories(m.NOT_ELIGIBLE_REASON_PATTERNS),
}
STATUSES = {s.value for s in InstanceStatus}


def _scrape(engine: Engine, services: Services, broker_url: str | None = None) -> Scrape:
    registry = metrics_registry(engine, broker_url or services.broker_url, [services.queue_name])
    return parse(generate_latest(registry).decode())


def _set_times(engine: Engine, instance_id: int, received_at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE instances SET received_at = :t WHERE id = :id"),
            {"t": received_at, "id": instance_id},
        )


def _set_scored_at(engine: Engine, instance_id: int, created_at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE predictions SET created_at = :t WHERE instance_id = :id"),
            {"t": created_at, "id": instance_id},
        )


def _assert_no_identifiers(scrape: Scrape, raw: str, *identifiers: str) -> None:
    for identifier in identifiers:
        assert identifier not in raw
    assert scrape.label_values("reason") <= REASONS
    for value in scrape.label_values("status"):  # an instance status or a DICOM status
        assert value in STATUSES or re.fullmatch(r"0x[0-9A-F]{4}", value), value
    for value in scrape.label_values("worker"):
        assert re.fullmatch(r"[\w.-]+:\d+", value), value
    for sample in scrape.samples:
        for value in sample.labels.values():
            assert not re.fullmatch(r"\d+(\.\d+){3,}", value), f"a UID as label: {sample}"


def test_collector_counts_statuses_reason_categories_and_turnaround_buckets(
    engine: Engine, services: Services
) -> None:
    now = datetime.now(UTC)
    uid = f"{TEST_ROOT}77"
    # Study 1: two instances; the last arrives 10 s after the first, scored 45 s later.
    first = record(engine, f"{uid}.1", f"{uid}.1.1", ACCESSION)
    last = record(engine, f"{uid}.1", f"{uid}.1.2", ACCESSION)
    scored = dataclasses.replace(
        prediction(0.8), decode_ms=40.0, inference_ms=700.0, worker_id="w-t:10"
    )
    for instance_id in (first, last):
        repo.record_prediction(engine, instance_id, dataclasses.replace(scored, worker_id="w-a:11"))
    received = now - timedelta(minutes=5)
    _set_times(engine, first, received)
    _set_times(engine, last, received + timedelta(seconds=10))
    _set_scored_at(engine, first, received + timedelta(seconds=3))
    _set_scored_at(engine, last, received + timedelta(seconds=55))
    # Study 2: scored 0.2 s after it arrived.
    quick = record(engine, f"{uid}.2", f"{uid}.2.1")
    repo.record_prediction(engine, quick, dataclasses.replace(scored, worker_id="w-b:12"))
    _set_times(engine, quick, now - timedelta(minutes=2))
    _set_scored_at(engine, quick, now - timedelta(minutes=2) + timedelta(seconds=0.2))
    # Study 3: one scored, one still queued: no turnaround yet.
    pending_done = record(engine, f"{uid}.3", f"{uid}.3.1")
    repo.record_prediction(engine, pending_done, scored)
    queued = record(engine, f"{uid}.3", f"{uid}.3.2")
    repo.mark_enqueued(engine, queued)
    # Study 4: received two days ago: outside the heartbeats' 24 h window, in the histograms.
    old = record(engine, f"{uid}.4", f"{uid}.4.1")
    repo.record_prediction(engine, old, scored)
    _set_times(engine, old, now - timedelta(days=2))
    # Failures and not-eligible reasons, one with a name in free text.
    reasons = {
        (InstanceStatus.FAILED, "unreadable DICOM (InvalidDicomError); resend the study"): (
            "unreadable_dicom"
        ),
        (InstanceStatus.FAILED, "pixel data could not be decoded: truncated stream"): "pixel_data",
        (InstanceStatus.FAILED, f"gave up after 6 attempts: {PATIENT_NAME} unreachable"): (
            "retries_exhausted"
        ),
        (InstanceStatus.FAILED, f"something new about {PATIENT_NAME}"): "other",
        (InstanceStatus.FAILED, "Rows 70,000 exceeds the limit of 65,535 (decode limit x)"): (
            "decode_limit"
        ),
        (InstanceStatus.NOT_ELIGIBLE, "modality CT is not a chest radiograph (CR/DX)"): "modality",
        (InstanceStatus.NOT_ELIGIBLE, "lateral view (ViewPosition LL) is not scored"): (
            "lateral_view"
        ),
        (InstanceStatus.NOT_ELIGIBLE, "body part ABDOMEN is not chest"): "body_part",
        (InstanceStatus.NOT_ELIGIBLE, "image 32x32 is too small (< 64 px)"): "image_size",
    }
    for n, ((status, reason), category) in enumerate(reasons.items()):
        assert m.reason_category(reason, _patterns(status)) == category
        instance_id = record(engine, f"{uid}.9{n}", f"{uid}.9{n}.1")
        if status is InstanceStatus.FAILED:
            repo.record_failed(engine, instance_id, reason)
        else:
            repo.record_not_eligible(engine, instance_id, reason)
    extra_lateral = record(engine, f"{uid}.80", f"{uid}.80.1")
    repo.record_not_eligible(engine, extra_lateral, "lateral view (ViewCodeSequence) no")
    processing = record(engine, f"{uid}.81", f"{uid}.81.1")
    repo.start_processing(engine, processing, f"{uid}.81.1")

    registry = metrics_registry(engine, services.broker_url, [services.queue_name])
    raw = generate_latest(registry).decode()
    scrape = parse(raw)

    assert scrape.value("cxr_database_up") == 1
    assert scrape.value("cxr_instances_received_total") == 6 + len(reasons) + 2
    assert scrape.value("cxr_instances_scored_total") == 5
    assert scrape.value("cxr_instances", status="queued") == 1
    assert scrape.value("cxr_instances", status="received") == 0
    assert scrape.value("cxr_jobs_in_flight") == 1
    assert scrape.value("cxr_instances_failed_total", reason="unreadable_dicom") == 1
    assert scrape.value("cxr_instances_failed_total", reason="other") == 1
    assert scrape.value("cxr_instances_failed_total", reason="decode_limit") == 1
    assert scrape.value("cxr_instances_failed_total", reason="timeout") == 0
    assert scrape.value("cxr_instances_not_eligible_total", reason="lateral_view") == 2
    assert scrape.value("cxr_instances_not_eligible_total", reason="modality") == 1
    assert scrape.value("cxr_instances_not_eligible_total", reason="other") == 0
    assert scrape.value("cxr_oldest_pending_age_seconds") >= 0

    # Turnaround: 45 s (last received → last scored) lands in le=60 not le=30; 0.2 s in
    # le=0.5; the old study (received two days ago, scored now) in +Inf only; the pending
    # study is not in it. Ordinary cumulative histograms (every row, not a 24 h window):
    # _bucket, _sum and _count, which histogram_quantile() over rate() can use.
    assert scrape.types["cxr_turnaround_seconds"] == "histogram"
    assert "cxr_turnaround_seconds_gsum" not in scrape.types
    assert not scrape.named("cxr_turnaround_seconds_gcount")
    assert scrape.value("cxr_turnaround_seconds_count") == 3
    assert scrape.value("cxr_turnaround_seconds_bucket", le="0.5") == 1
    assert scrape.value("cxr_turnaround_seconds_bucket", le="30.0") == 1
    assert scrape.value("cxr_turnaround_seconds_bucket", le="60.0") == 2
    assert scrape.value("cxr_turnaround_seconds_bucket", le="3600.0") == 2
    assert scrape.value("cxr_turnaround_seconds_bucket", le="+Inf") == 3
    assert scrape.value("cxr_turnaround_seconds_sum") > 45.2 + 2 * 86400 - 60
    # Scoring latency over the five scored instances, the old one included.
    assert scrape.value("cxr_scoring_decode_seconds_bucket", le="0.025") == 0
    assert scrape.value("cxr_scoring_decode_seconds_bucket", le="0.05") == 5
    assert scrape.value("cxr_scoring_inference_seconds_bucket", le="0.5") == 0
    assert scrape.value("cxr_scoring_inference_seconds_bucket", le="1.0") == 5
    assert scrape.value("cxr_scoring_inference_seconds_sum") == pytest.approx(3.5)
    assert scrape.value("cxr_scoring_inference_seconds_count") == 5

    # the model info is the registry's, not the predictions' (test_model_info_... below)
    assert "v1" not in {s.labels["model_version"] for s in scrape.named("cxr_model_info")}
    ages = {
        s.labels["worker"]: s.value for s in scrape.named("cxr_worker_last_prediction_age_seconds")
    }
    assert set(ages) == {"w-a:11", "w-b:12", "w-t:10"}
    assert ages["w-b:12"] < ages["w-a:11"]  # b scored last (2 min ago) , a 4 min ago
    assert 100 < ages["w-b:12"] < 3600

    _assert_no_identifiers(scrape, raw, PATIENT_NAME, ACCESSION, uid)


@pytest.fixture
def registry(engine: Engine) -> Iterator[Engine]:
    """An empty model registry (a worker registers the shipped model again when it starts)."""

    def clear() -> None:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE models, population_strata RESTART IDENTITY"))

    clear()
    yield engine
    clear()


def _model(version: str, sha256: str, reference: dict[str, object] | None = None) -> NewModel:
    return NewModel(
        version=version,
        name="cxr-pneumonia",
        sha256=sha256,
        uri=f"file:///models/{version}",
        calibration_uri=f"file:///models/{version}/calibration.json",
        calibration_version=f"{version}-cal",
        reference=reference,
    )


def test_model_info_is_the_registrys_active_and_shadow_model_at_scrape_time(
    registry: Engine, services: Services
) -> None:
    engine = registry
    actor = Actor("cli:test", ActorKind.CLI)
    models.register(engine, _model("m1", "1" * 64), actor, activate_if_none=True)
    models.register(engine, _model("m2", "2" * 64), actor)
    models.shadow(engine, "m2", actor)
    # predictions by another version say nothing about what is active now
    repo.record_prediction(
        engine, record(engine, f"{TEST_ROOT}.61", f"{TEST_ROOT}.61.1"), prediction(0.4)
    )

    def info(scrape: Scrape) -> set[tuple[str, str, str]]:
        return {
            (s.labels["model_version"], s.labels["calibration_version"], s.labels["role"])
            for s in scrape.named("cxr_model_info")
        }

    assert info(_scrape(engine, services)) == {
        ("m1", "m1-cal", "active"),
        ("m2", "m2-cal", "shadow"),
    }
    # the same collector, next scrape: an activation shows without a restart
    registry_ = metrics_registry(engine, services.broker_url, [services.queue_name])
    assert (
        models.activate(
            engine, "m2", actor, accept_shipped_calibration=True, accept_no_image_check=True
        )
        == "m1"
    )
    assert info(parse(generate_latest(registry_).decode())) == {("m2", "m2-cal", "active")}
    models.rollback(engine, actor)
    assert info(parse(generate_latest(registry_).decode())) == {("m1", "m1-cal", "active")}


def test_drift_psi_is_a_gauge_per_kind_from_current_psi(
    registry: Engine, services: Services
) -> None:
    engine = registry
    actor = Actor("cli:test", ActorKind.CLI)
    scrape = _scrape(engine, services)
    assert scrape.named("cxr_drift_psi") == []  # no active model, no reference: absent
    reference = json.loads((Path(cxr_model.__file__).parent / "drift_reference.json").read_text())
    models.register(
        engine, _model("v1", reference["model_sha256"], reference), actor, activate_if_none=True
    )
    # 40 in-scope studies scored 0.97 by the active model: far from the reference's spread
    for n in range(40):
        instance_id = record(engine, f"{TEST_ROOT}.62.{n}", f"{TEST_ROOT}.62.{n}.1")
        repo.record_prediction(
            engine,
            instance_id,
            prediction(0.97),
            population=repo.PopulationNote("in_scope", "age 3 y"),
        )
    expected = drift.current_psi(engine)
    assert all(value is not None for value in expected.values())
    scrape = _scrape(engine, services)
    assert scrape.types["cxr_drift_psi"] == "gauge"
    for kind in ("score", "eligibility", "population"):
        assert scrape.value("cxr_drift_psi", kind=kind) == pytest.approx(expected[kind])
    assert scrape.value("cxr_drift_psi", kind="score") > 0.2  # a real shift reads as one


def _patterns(status: InstanceStatus) -> tuple[tuple[str, str], ...]:
    if status is InstanceStatus.FAILED:
        return m.FAILED_REASON_PATTERNS
    return m.NOT_ELIGIBLE_REASON_PATTERNS


def test_collector_reports_claims_per_lease_owner(engine: Engine, services: Services) -> None:
    instance_id = record(engine, f"{TEST_ROOT}78.1", f"{TEST_ROOT}78.1.1")
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE instances SET status = 'processing', lease_owner = 'w-c:13', "
                "updated_at = now() - interval '30 seconds' WHERE id = :id"
            ),
            {"id": instance_id},
        )
    ages = {
        s.labels["worker"]: s.value
        for s in _scrape(engine, services).named("cxr_worker_last_claim_age_seconds")
    }
    assert set(ages) == {"w-c:13"}
    assert 30 <= ages["w-c:13"] < 3600


def test_queue_depth_is_the_length_of_the_redis_list_and_a_dead_broker_reads_down(
    engine: Engine, services: Services
) -> None:
    client = redis.Redis.from_url(services.broker_url)
    try:
        client.rpush(services.queue_name, b"a", b"b", b"c")
        scrape = _scrape(engine, services)
    finally:
        client.delete(services.queue_name)
        client.close()
    assert scrape.value("cxr_broker_up") == 1
    assert scrape.value("cxr_queue_depth", queue=services.queue_name) == 3
    assert scrape.value("cxr_instances_received_total") == 0

    dead = _scrape(engine, services, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    assert dead.value("cxr_broker_up") == 0
    assert dead.named("cxr_queue_depth") == []
    assert dead.value("cxr_database_up") == 1  # the rest of the scrape still answers


@contextmanager
def _serve(app: FastAPI) -> Iterator[str]:
    """``app`` under a real uvicorn on a free loopback port (as tests/web_server.py)."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-metrics", daemon=True)
    thread.start()
    wait_until(
        lambda: server.started, 30, "uvicorn started", alive=thread_running(thread), interval=0.01
    )
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _ops_only(request: Request) -> None:
    """Stands in for the app's role check: refuses everyone with 403."""
    raise HTTPException(403, "this needs the role ops")


def test_metrics_route_needs_the_scrape_token(engine: Engine, services: Services) -> None:
    record(engine, f"{TEST_ROOT}79.1", f"{TEST_ROOT}79.1.1", ACCESSION)
    app = FastAPI()
    app.include_router(
        metrics_router(
            engine,
            broker_url=services.broker_url,
            queue_names=[services.queue_name],
            authorize=scrape_token(SecretStr(TOKEN)),
        )
    )
    with _serve(app) as base:
        bare = httpx.get(f"{base}/metrics")
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"] == "Bearer"
        assert "cxr_" not in bare.text
        wrong = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401
        basic = httpx.get(f"{base}/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    scrape = parse(response.text)
    assert scrape.value("cxr_instances_received_total") == 1
    assert scrape.value("cxr_queue_depth", queue=services.queue_name) == 0
    assert scrape.get("process_cpu_seconds_total", default=-1) >= 0  # this process's own
    _assert_no_identifiers(scrape, response.text, ACCESSION, f"{TEST_ROOT}79")


def test_metrics_route_without_a_configured_token_refuses_everyone(engine: Engine) -> None:
    app = FastAPI()
    app.include_router(
        metrics_router(engine, broker_url=None, queue_names=(), authorize=scrape_token(None))
    )
    with _serve(app) as base:
        assert httpx.get(f"{base}/metrics").status_code == 401
        for guess in ("", "None", TOKEN):
            guessed = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {guess}x"})
            assert guessed.status_code == 401


def test_scrape_token_or_hands_other_requests_to_the_apps_check(engine: Engine) -> None:
    app = FastAPI()
    authorize = scrape_token_or(SecretStr(TOKEN), _ops_only)
    app.include_router(metrics_router(engine, broker_url=None, queue_names=(), authorize=authorize))
    with _serve(app) as base:
        assert httpx.get(f"{base}/metrics").status_code == 403
        ok = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert parse(ok.text).named("cxr_broker_up") == []  # no broker given: no broker metrics


def _associate(port: int, calling_ae: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(make_dataset().SOPClassUID)
    return ae


def test_listener_port_counts_c_store_statuses_and_associations(
    services: Services, engine: Engine, tmp_path: Path
) -> None:
    settings = ListenerSettings(
        database_url=services.database_url,
        broker_url=services.broker_url,
        queue_name=services.queue_name,
        data_dir=tmp_path,
        storage_uri=(tmp_path / "instances").as_uri(),
        dicom_host="127.0.0.1",
        dicom_port=0,
        allowed_calling_ae_titles=["TEST_SCU"],
        metrics_port=0,
    )
    handle = start_listener(settings, engine, make_celery(services.broker_url, services.queue_name))
    try:
        assert handle.metrics is not None
        url = f"http://127.0.0.1:{handle.metrics.port}/metrics"
        before = fetch(url)

        refused = _associate(handle.port, "INTRUDER").associate(
            "127.0.0.1", handle.port, ae_title="CXR_TRIAGE"
        )
        assert refused.is_rejected
        ds = make_dataset(accession=ACCESSION)
        assoc = _associate(handle.port, "TEST_SCU").associate(
            "127.0.0.1", handle.port, ae_title="CXR_TRIAGE"
        )
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(ds).Status), int(assoc.send_c_store(ds).Status)]
        assoc.release()
        assert statuses == [0x0000, 0x0000]  # the second is a resend: success, no new row

        def delta(scrape: Scrape, name: str, **labels: str) -> float:
            return scrape.get(name, **labels) - before.get(name, **labels)

        after = poll(
            url,
            lambda s: delta(s, "cxr_listener_associations_total", event="released") == 1,
            timeout_s=30,
            what="listener metrics",
        )
        raw = httpx.get(url).text
    finally:
        handle.shutdown()
    assert delta(after, "cxr_listener_stores_total", status="0x0000") == 2
    assert delta(after, "cxr_listener_associations_total", event="established") == 1
    assert delta(after, "cxr_listener_associations_total", event="rejected") == 1
    assert delta(after, "cxr_listener_associations_total", event="aborted") == 0
    assert after.types["cxr_listener_connections_open"] == "gauge"
    # status codes only (earlier tests in this process may have counted other codes)
    assert "0x0000" in after.label_values("status")
    assert all(v.startswith("0x") and len(v) == 6 for v in after.label_values("status"))
    _assert_no_identifiers(after, raw, ACCESSION, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID))
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2)  # shutdown closed the metrics port too


def test_worker_port_reports_its_batches_jobs_and_model(
    services: Services,
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
) -> None:
    port = free_port()
    ds = make_dataset(accession=ACCESSION)
    assoc = _associate(listener, "TEST_SCU").associate("127.0.0.1", listener, ae_title="CXR_TRIAGE")
    assert assoc.is_established
    assert int(assoc.send_c_store(ds).Status) == 0x0000
    assoc.release()
    start_worker(
        batch_size=2,
        wait_ms=100,
        log=tmp_path / "worker.log",
        extra_env={"CXR_METRICS_PORT": str(port)},
    )
    assert wait_until_final(engine, 1) == {str(ds.SOPInstanceUID): InstanceStatus.DONE}
    url = f"http://127.0.0.1:{port}/metrics"
    scrape = poll(
        url,
        lambda s: s.get("cxr_worker_jobs_total", outcome="done") == 1,
        what="worker metrics",
    )
    assert scrape.value("cxr_worker_batch_size_count") == 1
    assert scrape.value("cxr_worker_batch_size_bucket", le="1.0") == 1
    assert scrape.value("cxr_worker_batch_seconds_count") == 1
    assert scrape.value("cxr_worker_batch_seconds_sum") > 0
    assert scrape.value("cxr_worker_jobs_total", outcome="failed") == 0
    contract = read_contract(WEIGHTS_DIR)
    (model,) = scrape.named("cxr_worker_model_info")
    assert model.labels["model_version"] == contract.version
    assert model.labels["device"] == "cpu"
    _assert_no_identifiers(scrape, httpx.get(url).text, ACCESSION, str(ds.SOPInstanceUID))

    # The web side sees the same job from the database: scored, one turnaround, the
    # worker's heartbeat.
    web = _scrape(engine, services)
    assert web.value("cxr_instances_scored_total") == 1
    assert web.value("cxr_turnaround_seconds_bucket", le="+Inf") == 1
    (heartbeat,) = web.named("cxr_worker_last_prediction_age_seconds")
    assert re.fullmatch(r"[\w.-]+:\d+", heartbeat.labels["worker"])
    assert web.value("cxr_model_info", model_version=contract.version) == 1
