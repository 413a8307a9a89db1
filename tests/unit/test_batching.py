"""The micro-batcher: items from many threads are run together, results go back in order."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from worker.batching import Batcher


def test_concurrent_items_share_one_batch_and_get_their_own_results() -> None:
    calls: list[int] = []
    gate = threading.Barrier(6)

    def double(items: Sequence[int]) -> list[int]:
        calls.append(len(items))
        return [2 * i for i in items]

    batcher: Batcher[int, int] = Batcher(double, max_size=6, max_wait_s=5.0)
    results: dict[int, tuple[int, int]] = {}

    def submit(i: int) -> None:
        gate.wait()
        out, info = batcher.submit(i).result(timeout=10)
        results[i] = (out, info.size)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert {i: r[0] for i, r in results.items()} == {i: 2 * i for i in range(6)}
    assert calls == [6]
    assert all(size == 6 for _, size in results.values())


def test_batch_never_exceeds_max_size() -> None:
    sizes: list[int] = []

    def ident(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        return list(items)

    batcher: Batcher[int, int] = Batcher(ident, max_size=3, max_wait_s=0.2)
    futures = [batcher.submit(i) for i in range(10)]
    assert [f.result(timeout=10)[0] for f in futures] == list(range(10))
    batcher.close()
    assert max(sizes) <= 3
    assert sum(sizes) == 10


def test_a_lone_item_runs_after_max_wait_without_more_input() -> None:
    batcher: Batcher[int, int] = Batcher(lambda xs: [x + 1 for x in xs], 8, max_wait_s=0.05)
    out, info = batcher.submit(41).result(timeout=10)
    batcher.close()
    assert (out, info.size) == (42, 1)


def test_a_failing_batch_fails_every_waiting_item() -> None:
    def boom(items: Sequence[int]) -> list[int]:
        raise RuntimeError("model crashed")

    batcher: Batcher[int, int] = Batcher(boom, max_size=4, max_wait_s=0.2)
    futures = [batcher.submit(i) for i in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError, match="model crashed"):
            f.result(timeout=10)
    # the batcher survives and serves the next item
    batcher2_future = batcher.submit(1)
    with pytest.raises(RuntimeError):
        batcher2_future.result(timeout=10)
    batcher.close()


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        Batcher(lambda xs: list(xs), max_size=0, max_wait_s=0.1)


def test_a_caller_that_gave_up_is_left_out_and_the_batcher_keeps_serving() -> None:
    """Defect 8: a bounded wait cancels its future; a stuck batch does not kill the
    batcher thread, and a cancelled item never reaches the batch function."""
    release = threading.Event()
    seen: list[list[int]] = []

    def slow(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        release.wait(10)
        return list(items)

    batcher: Batcher[int, int] = Batcher(slow, max_size=1, max_wait_s=0.0)
    first = batcher.submit(1)  # taken by the batch function, which blocks
    waiting = batcher.submit(2)  # still queued behind it
    with pytest.raises(TimeoutError):
        waiting.result(timeout=0.05)
    assert waiting.cancel()  # the caller gives up
    release.set()
    assert first.result(timeout=10)[0] == 1
    assert batcher.submit(3).result(timeout=10)[0] == 3
    batcher.close()
    assert seen == [[1], [3]]
