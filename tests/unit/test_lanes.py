"""The lane rule (cxr_queue.lanes): which instances are scored first, and the queue order
a worker's consumer uses (urgent first, one normal pick in every NORMAL_EVERY)."""

from __future__ import annotations

import pytest
from kombu.utils.scheduling import cycle_by_name
from pydicom.dataset import Dataset

from cxr_common.settings import ListenerSettings
from cxr_queue.contract import make_celery
from cxr_queue.lanes import (
    NORMAL_EVERY,
    QUEUE_ORDER_STRATEGY,
    Lane,
    LaneCycle,
    choose_lane,
    header_asks_urgent,
    lane_queue,
    lane_queues,
)


def _ds(**attrs: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    "attrs",
    [
        {"RequestedProcedurePriority": "STAT"},
        {"RequestedProcedurePriority": "HIGH"},
        {"RequestedProcedurePriority": "stat "},
        {"ScheduledProcedureStepPriority": "HIGH"},
        {"StudyPriorityID": "STAT"},
    ],
)
def test_a_stat_or_high_priority_asks_for_the_urgent_lane(attrs: dict[str, str]) -> None:
    assert header_asks_urgent(_ds(**attrs))


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"RequestedProcedurePriority": "ROUTINE"},
        {"RequestedProcedurePriority": "MEDIUM"},
        {"ScheduledProcedureStepPriority": "LOW"},
        {"StudyPriorityID": "MED"},
        {"RequestedProcedurePriority": ""},
    ],
)
def test_routine_low_or_no_priority_does_not(attrs: dict[str, str]) -> None:
    assert not header_asks_urgent(_ds(**attrs))


def test_a_priority_in_the_request_attributes_sequence_counts() -> None:
    item = _ds(ScheduledProcedureStepPriority="HIGH")
    ds = _ds(RequestAttributesSequence=[_ds(), item])
    assert header_asks_urgent(ds)
    assert not header_asks_urgent(_ds(RequestAttributesSequence=[_ds()]))


def test_urgent_ae_titles_and_urgent_headers_choose_the_urgent_lane() -> None:
    titles = ["ED_DX", " ICU_PORT "]
    assert choose_lane("ED_DX", False, titles) is Lane.URGENT
    assert choose_lane("ICU_PORT", False, titles) is Lane.URGENT
    assert choose_lane("OPD_DX", True, titles) is Lane.URGENT
    assert choose_lane("OPD_DX", False, titles) is Lane.NORMAL
    assert choose_lane("ed_dx", False, titles) is Lane.NORMAL  # AE titles are case-sensitive
    assert choose_lane(None, False, titles) is Lane.NORMAL
    assert choose_lane("ED_DX", False, []) is Lane.NORMAL


def test_urgent_calling_ae_titles_are_comma_separated_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CXR_URGENT_CALLING_AE_TITLES", "ED_DX, ICU_PORT,")
    assert ListenerSettings().urgent_calling_ae_titles == ["ED_DX", "ICU_PORT"]
    monkeypatch.delenv("CXR_URGENT_CALLING_AE_TITLES")
    assert ListenerSettings().urgent_calling_ae_titles == []


def test_each_lane_has_its_queue_and_a_worker_lists_urgent_first() -> None:
    assert lane_queue("cxr-score", Lane.NORMAL) == "cxr-score"
    assert lane_queue("cxr-score", Lane.URGENT) == "cxr-score-urgent"
    assert lane_queues("q") == ["q-urgent", "q"]


def _cycle() -> LaneCycle:
    cycle = cycle_by_name(QUEUE_ORDER_STRATEGY)()  # type: ignore[no-untyped-call] # as kombu's Redis channel builds it
    assert isinstance(cycle, LaneCycle)
    cycle.update({"q", "q-urgent"})  # kombu passes a set: no order of its own
    return cycle


def test_the_urgent_queue_comes_first_in_every_brpop_until_the_streak_bound() -> None:
    cycle = _cycle()
    picks = []
    for _ in range(3 * NORMAL_EVERY):
        first = cycle.consume(2)[0]
        picks.append(first)
        cycle.rotate(first)  # both lanes have work: the first listed queue delivers
    # one normal pick in every NORMAL_EVERY while both lanes wait
    assert picks == (["q-urgent"] * (NORMAL_EVERY - 1) + ["q"]) * 3


def test_an_empty_normal_lane_keeps_the_bound_until_a_normal_job_is_taken() -> None:
    cycle = _cycle()
    for _ in range(NORMAL_EVERY + 3):
        cycle.rotate("q-urgent")  # the normal queue was empty: urgent delivered anyway
    assert cycle.consume(2) == ["q", "q-urgent"]
    cycle.rotate("q")
    assert cycle.consume(2) == ["q-urgent", "q"]


def test_make_celery_orders_the_queues_by_lane() -> None:
    app = make_celery("redis://127.0.0.1:6379/0", "q")
    assert app.conf.broker_transport_options["queue_order_strategy"] == QUEUE_ORDER_STRATEGY
