"""Which scoring jobs the broker still holds: waiting in the queue or delivered and not
yet acknowledged (Redis transport).

The reconciler re-enqueues a ``queued`` instance only when no waiting message names it
(and an unacknowledged one only after a retry's longest countdown), so a Redis that
restarted empty (defect 1b), a job acknowledged without a final status (defect 1a) or a
job a dead worker had reserved but not yet claimed is repaired without flooding a long
backlog with duplicates.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery

from cxr_queue.contract import SCORE_TASK

#: kombu's Redis transport keeps priorities 3, 6, 9 in sibling lists ``queue\x06\x16N``.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_UNACKED_KEY = "unacked"
_CHUNK = 1000


def _instance_id(message: Any) -> int | None:
    """The instance id of one kombu message (a scoring job), or None."""
    try:
        if message["headers"]["task"] != SCORE_TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        return int(kwargs["job"]["instance_id"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None


def _ids(messages: Iterable[Any]) -> set[int]:
    return {i for m in messages if (i := _instance_id(m)) is not None}


@dataclass(frozen=True)
class LiveJobs:
    """Instance ids of the scoring jobs the broker holds for one queue."""

    waiting: frozenset[int]
    """In the queue: a worker will take them."""
    unacked: frozenset[int]
    """Delivered to a worker and not acknowledged: running, held back for a retry's
    countdown (at most ``MAX_RETRY_COUNTDOWN_S``), or held by a worker that died (back
    only after the visibility timeout)."""


def live_instance_ids(app: Celery, *queue_names: str) -> LiveJobs:
    """Instance ids of every scoring job waiting in one of ``queue_names`` (e.g. every
    lane's queue) or delivered from one and not yet acknowledged. Raises the broker's
    errors (the caller skips its sweep)."""
    waiting: set[int] = set()
    unacked: set[int] = set()
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        for queue_name in queue_names:
            for priority in _PRIORITY_STEPS:
                key = queue_name if priority == 0 else f"{queue_name}{_PRIORITY_SEP}{priority}"
                start = 0
                while chunk := client.lrange(key, start, start + _CHUNK - 1):
                    waiting |= _ids(json.loads(raw) for raw in chunk)
                    start += _CHUNK
        for _tag, raw in client.hscan_iter(_UNACKED_KEY, count=_CHUNK):
            try:
                message, _exchange, routing_key = json.loads(raw)
            except (TypeError, ValueError):
                continue
            if routing_key in queue_names:
                unacked |= _ids([message])
    return LiveJobs(frozenset(waiting), frozenset(unacked))


def queue_depth(app: Celery, *queue_names: str) -> int:
    """Jobs waiting in ``queue_names`` (all priorities). Raises the broker's errors."""
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        return sum(
            int(client.llen(q if p == 0 else f"{q}{_PRIORITY_SEP}{p}"))
            for q in queue_names
            for p in _PRIORITY_STEPS
        )
