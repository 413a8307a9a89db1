"""Metric definitions without services: reason categories, label values, settings, and a
metrics port that cannot be bound."""

from __future__ import annotations

import logging
import os
import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from cxr_common import metrics as m
from cxr_common.errors import ConfigurationError
from cxr_common.settings import ListenerSettings, WebSettings, WorkerSettings
from cxr_db.instances.stats import Histogram, PipelineSnapshot, ResultsSnapshot
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.results.states import SendStatus
from dicom_listener.metrics import status_label
from tests.metrics_scrape import parse
from worker.metrics import outcome_label
from worker.outcomes import JobOutcome
from worklist.metrics_collector import snapshot_metrics


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CXR_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("unreadable DICOM (InvalidDicomError); resend the study", "unreadable_dicom"),
        ("Unreadable dicom (EOFError)", "unreadable_dicom"),  # case does not matter
        ("pixel data could not be decoded: truncated stream", "pixel_data"),
        (
            "Columns 70,000 exceeds the limit of 65,535 (decode limit max_columns): check the "
            "modality's export",
            "decode_limit",
        ),
        (
            "Rows is missing: the image size is unknown; check the modality's export",
            "image_attributes",
        ),
        (
            "stored DICOM file not found: check that this worker mounts CXR_STORAGE_URI",
            "file_missing",
        ),
        ("gave up after 6 attempts: database unavailable", "retries_exhausted"),
        ("a worker stopped 3 times while scoring this file", "worker_crashed"),
        ("scoring did not finish within 120 s", "timeout"),
        ("internal error (KeyError); see worker logs", "internal_error"),
        ("DOE^JANE said something new", m.OTHER),
        ("", m.OTHER),
        (None, m.OTHER),
    ],
)
def test_failed_reasons_map_to_a_fixed_category(reason: str | None, category: str) -> None:
    assert m.reason_category(reason, m.FAILED_REASON_PATTERNS) == category


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("modality CT is not a chest radiograph (CR/DX)", "modality"),
        ("body part (non-standard value) is not chest", "body_part"),
        ("lateral view (ViewPosition LL) is not scored; frontal PA/AP only", "lateral_view"),
        ("image 32x48 is too small (< 64 px)", "image_size"),
        ("image is fine but something else", m.OTHER),
        ("not a chest radiograph", m.OTHER),
    ],
)
def test_not_eligible_reasons_map_to_a_fixed_category(reason: str, category: str) -> None:
    assert m.reason_category(reason, m.NOT_ELIGIBLE_REASON_PATTERNS) == category


def test_categories_are_few_snake_case_and_end_with_other() -> None:
    for patterns in (m.FAILED_REASON_PATTERNS, m.NOT_ELIGIBLE_REASON_PATTERNS):
        categories = m.reason_categories(patterns)
        assert categories[-1] == m.OTHER
        assert len(categories) <= 12
        assert all(c.replace("_", "").isalpha() and c.islower() for c in categories)


def test_buckets_are_increasing_and_turnaround_spans_half_a_second_to_an_hour() -> None:
    for buckets in (
        m.TURNAROUND_BUCKETS_S,
        m.SCORING_BUCKETS_S,
        m.BATCH_SIZE_BUCKETS,
        m.TIME_TO_READ_BUCKETS_S,
    ):
        assert list(buckets) == sorted(set(buckets))
    assert (m.TURNAROUND_BUCKETS_S[0], m.TURNAROUND_BUCKETS_S[-1]) == (0.5, 3600.0)


def test_process_label_values_come_from_fixed_sets() -> None:
    assert status_label(0) == "0x0000"
    assert status_label(0xA701) == "0xA701"
    assert status_label(0x1C210) == "0xC210"  # 16 bits, whatever is handed in
    assert outcome_label(JobOutcome.DONE.value, "SUCCESS") == "done"
    assert outcome_label("skipped", "SUCCESS") == "skipped"
    assert outcome_label(RuntimeError("boom"), "RETRY") == "retry"
    assert outcome_label(RuntimeError("DOE^JANE"), "FAILURE") == "error"
    assert outcome_label("DOE^JANE", "SUCCESS") == "error"  # never free text


def test_metrics_ports_are_off_by_default_and_bound_to_loopback() -> None:
    for cls in (ListenerSettings, WorkerSettings):
        settings = cls()
        assert settings.metrics_port is None
        assert settings.metrics_host == "127.0.0.1"
    with pytest.raises(ConfigurationError, match="CXR_METRICS_PORT"):
        WorkerSettings().with_overrides(metrics_port=70000)


def test_metrics_token_is_secret_at_least_16_characters_and_empty_means_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CXR_METRICS_TOKEN", "")
    assert WebSettings().metrics_token is None
    monkeypatch.setenv("CXR_METRICS_TOKEN", "s3cret-scrape-token-42")
    settings = WebSettings()
    assert settings.metrics_token is not None
    assert settings.metrics_token.get_secret_value() == "s3cret-scrape-token-42"
    assert "s3cret" not in repr(settings)
    with pytest.raises(ConfigurationError, match="at least 16") as caught:
        WebSettings().with_overrides(metrics_token="short-one")
    assert "short-one" not in str(caught.value)


def test_a_taken_metrics_port_is_logged_and_metrics_stay_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="cxr_common.metrics"):
            server = m.serve_metrics("127.0.0.1", port, "worker", CollectorRegistry())
    assert server is None
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
    assert "CXR_METRICS_PORT" in caplog.text
    assert m.serve_metrics("127.0.0.1", None, "worker") is None


def test_a_metrics_port_serves_its_registry_and_closes() -> None:
    import httpx
    from prometheus_client import Counter

    registry = CollectorRegistry()
    Counter("cxr_test_things", "Things.", registry=registry).inc(3)
    server = m.serve_metrics("127.0.0.1", 0, "test", registry)
    assert server is not None
    try:
        body = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    finally:
        server.close()
    assert "cxr_test_things_total 3.0" in body
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


def _hist(bounds: tuple[float, ...], values: list[float]) -> Histogram:
    cumulative = tuple(sum(v <= b for v in values) for b in bounds)
    return Histogram(bounds, cumulative, len(values), float(sum(values)))


def test_snapshot_histograms_are_cumulative_prometheus_histograms() -> None:
    """``_bucket``/``_sum``/``_count`` (what ``histogram_quantile`` over ``rate()`` needs),
    never the gauge histogram's ``_gcount``/``_gsum``; time to read by flagged."""
    scoring, turnaround = m.SCORING_BUCKETS_S, m.TURNAROUND_BUCKETS_S
    snap = PipelineSnapshot(
        by_status={InstanceStatus.DONE: 3},
        reasons={},
        oldest_pending_age_s=0.0,
        decode=_hist(scoring, [0.02, 0.04, 0.3]),
        inference=_hist(scoring, [0.7, 0.7, 0.7]),
        turnaround=_hist(turnaround, [0.2, 45.0]),
        models=(),
        worker_prediction_age_s={},
        worker_claim_age_s={},
        time_to_read={
            True: _hist(m.TIME_TO_READ_BUCKETS_S, [600.0, 1800.0]),
            False: _hist(m.TIME_TO_READ_BUCKETS_S, [7200.0]),
        },
        flagged_unread_oldest_s=120.0,
        unscored_oldest_s=0.0,
        results=ResultsSnapshot({SendStatus.FAILED: 2}, {}, 1, 60.0),
        sign_in_failures=3,
        lockouts=1,
        accounts_locked=1,
    )
    registry = CollectorRegistry()

    class _Fixed:
        def collect(self) -> list[Metric]:
            return list(snapshot_metrics(snap))

    registry.register(_Fixed())
    scrape = parse(generate_latest(registry).decode())
    for name in (
        "cxr_scoring_decode_seconds",
        "cxr_turnaround_seconds",
        "cxr_time_to_read_seconds",
    ):
        assert scrape.types[name] == "histogram"
        assert not scrape.named(f"{name}_gcount")
        assert not scrape.named(f"{name}_gsum")
    assert scrape.value("cxr_scoring_decode_seconds_count") == 3
    assert scrape.value("cxr_scoring_decode_seconds_bucket", le="0.05") == 2
    assert scrape.value("cxr_turnaround_seconds_sum") == pytest.approx(45.2)
    assert scrape.value("cxr_time_to_read_seconds_bucket", flagged="true", le="600.0") == 1
    assert scrape.value("cxr_time_to_read_seconds_count", flagged="true") == 2
    assert scrape.value("cxr_time_to_read_seconds_count", flagged="false") == 1
    assert scrape.value("cxr_flagged_unread_oldest_seconds") == 120
    assert scrape.value("cxr_result_sends_total", outcome="failed") == 2
    assert scrape.value("cxr_result_sends_total", outcome="sent") == 0
    assert scrape.value("cxr_result_studies", state="results_sent") == 0
    assert scrape.value("cxr_sign_in_failures_total") == 3
    assert scrape.value("cxr_account_lockouts_total") == 1


def test_metric_names_are_unique_and_prefixed() -> None:
    specs = [v for v in vars(m).values() if isinstance(v, m.MetricSpec)]
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    assert all(n.startswith("cxr_") for n in names)
