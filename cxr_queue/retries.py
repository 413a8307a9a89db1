"""Retries in one place: exponential backoff with jitter and a cap, for every task.

A task catches only its transient errors (``cxr_common.errors.TransientError``) and asks
:func:`retry_later` for the next attempt; once :meth:`RetryPolicy.exhausted` it writes
its permanent outcome (a failed row) instead. Permanent errors never retry.

The countdown of retry ``n`` (0-based) is drawn from ``[b/2, b]`` with
``b = min(first_s * 2**n, max_s)`` ("equal jitter"): jobs that failed together (a PACS or
database outage) come back spread out, never all at once, never later than the cap and
never at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NoReturn

from celery import Task


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    max_backoff_s: float
    first_s: float = 1.0
    jitter: bool = True

    def backoff_s(self, retries: int) -> float:
        """The largest countdown before retry ``retries`` + 1 (no jitter)."""
        return float(min(self.first_s * 2 ** min(retries, 30), self.max_backoff_s))

    def countdown_s(self, retries: int, rng: random.Random | None = None) -> float:
        """The countdown before retry ``retries`` + 1, jittered within its upper half."""
        top = self.backoff_s(retries)
        if not self.jitter:
            return top
        return (rng or random).uniform(top / 2, top)

    def exhausted(self, retries: int) -> bool:
        """``retries`` retries ran already: no more."""
        return retries >= self.max_retries


def retries_so_far(task: Task) -> int:
    return int(task.request.retries or 0)


def retry_later(task: Task, exc: Exception, policy: RetryPolicy) -> NoReturn:
    """Raise Celery's ``Retry`` for ``task`` after the policy's jittered countdown."""
    countdown = policy.countdown_s(retries_so_far(task))
    raise task.retry(exc=exc, countdown=countdown, max_retries=policy.max_retries) from exc
