"""Lanes of the scoring queue: urgent instances are scored before a backlog.

An instance goes to the **urgent** lane when

* its calling AE title is one of ``CXR_URGENT_CALLING_AE_TITLES`` (the emergency
  department's and ICU's modalities; exact match after trimming spaces), or
* its header asks for it: Requested Procedure Priority (0040,1003) or Scheduled Procedure
  Step Priority (0040,0027) is ``STAT`` or ``HIGH``, or the retired Study Priority ID
  (0032,000C) is ``STAT`` or ``HIGH`` (case-insensitive), at the top level of the data
  set or in an item of the Request Attributes Sequence (0040,0275).

Everything else goes to the **normal** lane. The listener decides the lane when it records
the instance (the row keeps it, so the reconciler re-enqueues into the same lane).

Each lane is its own Celery queue on the Redis transport: ``<queue>-urgent`` and
``<queue>``. A worker consumes both through :class:`LaneCycle` (kombu's
``queue_order_strategy``), which lists the urgent queue first in every ``BRPOP``, so Redis
hands over an urgent job whenever one waits. Within a lane the order is first in, first
out (kombu pushes on the left and pops on the right). The starvation bound: after
``NORMAL_EVERY - 1`` urgent jobs in a row a worker process lists the normal queue first
for its next pick, so while both lanes have work each worker process takes at least one
normal job in every ``NORMAL_EVERY`` it takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

#: Values of the priority attributes that put an instance in the urgent lane.
URGENT_PRIORITIES = frozenset({"STAT", "HIGH"})

#: Header attributes read for the priority (keywords).
PRIORITY_KEYWORDS = (
    "RequestedProcedurePriority",
    "ScheduledProcedureStepPriority",
    "StudyPriorityID",
)

#: A worker takes at least one normal job in every ``NORMAL_EVERY`` while both lanes wait.
NORMAL_EVERY = 5

URGENT_SUFFIX = "-urgent"


class Lane(StrEnum):
    URGENT = "urgent"
    NORMAL = "normal"


def lane_queue(queue_name: str, lane: Lane) -> str:
    """The Celery queue of ``lane`` for the scoring queue ``queue_name``."""
    return f"{queue_name}{URGENT_SUFFIX}" if lane is Lane.URGENT else queue_name


def lane_queues(queue_name: str) -> list[str]:
    """Every lane's queue, urgent first (the order a worker consumes them in)."""
    return [lane_queue(queue_name, Lane.URGENT), lane_queue(queue_name, Lane.NORMAL)]


def is_urgent_queue(queue: str) -> bool:
    return queue.endswith(URGENT_SUFFIX)


def _priority_values(ds: Any) -> Iterable[str]:
    for keyword in PRIORITY_KEYWORDS:
        value = ds.get(keyword)
        if value is not None:
            yield str(getattr(value, "value", value))


def header_asks_urgent(ds: Any) -> bool:
    """Whether a pydicom data set's priority attributes say STAT or HIGH (top level or
    in the Request Attributes Sequence). A malformed attribute counts as not urgent."""
    try:
        values = list(_priority_values(ds))
        for item in ds.get("RequestAttributesSequence") or []:
            values.extend(_priority_values(item))
    except Exception:  # noqa: BLE001 - pydicom raises many types on bad input
        return False
    return any(v.strip().upper() in URGENT_PRIORITIES for v in values)


def choose_lane(
    calling_ae_title: str | None, header_urgent: bool, urgent_ae_titles: Iterable[str]
) -> Lane:
    """The lane of one instance (see the module's docstring)."""
    if header_urgent:
        return Lane.URGENT
    if calling_ae_title is not None:
        ae = calling_ae_title.strip()
        if ae and ae in {t.strip() for t in urgent_ae_titles}:
            return Lane.URGENT
    return Lane.NORMAL


class LaneCycle:
    """kombu's queue order for one consumer channel (``queue_order_strategy``): urgent
    queues first, except that after ``NORMAL_EVERY - 1`` urgent deliveries in a row the
    normal queues come first once (the starvation bound).

    kombu calls :meth:`update` with the active queues (a set: no order of its own),
    :meth:`consume` for the keys of each ``BRPOP`` and :meth:`rotate` with the queue
    a message came from."""

    normal_every = NORMAL_EVERY

    def __init__(self, it: Sequence[str] | None = None) -> None:
        self.items: list[str] = list(it) if it is not None else []
        self.urgent_streak = 0

    def update(self, it: Iterable[str]) -> None:
        self.items[:] = sorted(it, key=lambda q: (not is_urgent_queue(q), q))

    def consume(self, n: int) -> list[str]:
        urgent = [q for q in self.items if is_urgent_queue(q)]
        normal = [q for q in self.items if not is_urgent_queue(q)]
        if self.urgent_streak >= self.normal_every - 1:
            return (normal + urgent)[:n]
        return (urgent + normal)[:n]

    def rotate(self, last_used: str) -> str:
        self.urgent_streak = self.urgent_streak + 1 if is_urgent_queue(last_used) else 0
        return last_used


#: The ``queue_order_strategy`` transport option naming :class:`LaneCycle`.
QUEUE_ORDER_STRATEGY = f"{__name__}:LaneCycle"
