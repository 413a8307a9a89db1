"""Retries in one place (``cxr_queue.retries``): exponential backoff, capped, jittered so
that jobs which failed together do not all come back at the same moment."""

from __future__ import annotations

import random

from cxr_queue.retries import RetryPolicy


def test_countdown_is_jittered_within_the_upper_half_of_the_backoff() -> None:
    policy = RetryPolicy(max_retries=10, max_backoff_s=60)
    rng = random.Random(17)
    for retries in range(10):
        top = policy.backoff_s(retries)
        draws = [policy.countdown_s(retries, rng) for _ in range(50)]
        assert all(top / 2 <= d <= top for d in draws)
    spread = {round(policy.countdown_s(5, rng), 3) for _ in range(50)}
    assert len(spread) > 10  # jobs retried together spread out


def test_without_jitter_the_countdown_is_the_backoff() -> None:
    policy = RetryPolicy(max_retries=3, max_backoff_s=5, jitter=False)
    assert [policy.countdown_s(n) for n in range(5)] == [1, 2, 4, 5, 5]


def test_exhausted_after_max_retries() -> None:
    policy = RetryPolicy(max_retries=2, max_backoff_s=5)
    assert [policy.exhausted(n) for n in range(4)] == [False, False, True, True]
