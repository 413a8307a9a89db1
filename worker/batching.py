"""Micro-batching across concurrent tasks.

Each Celery task thread submits one preprocessed tensor and waits on a future; one
batching thread collects up to ``max_size`` tensors or waits at most ``max_wait_s`` after
the first one, runs the model once for the whole batch and hands each task its result.
Message acknowledgement stays per task (``acks_late``), so a crash mid-batch redelivers
every job in it. Every wait on a future is bounded by its caller (``future.result(timeout)``);
a caller that gives up cancels its future, and the batch leaves it out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class BatchInfo:
    """What the batch an item ran in looked like (for timings on the prediction row)."""

    size: int
    run_ms: float


class Batcher(Generic[In, Out]):
    """Collects items from many threads and runs ``fn`` on lists of them."""

    def __init__(
        self,
        fn: Callable[[Sequence[In]], Sequence[Out]],
        max_size: int,
        max_wait_s: float,
        name: str = "batcher",
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._fn = fn
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[In, Future[tuple[Out, BatchInfo]]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: In) -> Future[tuple[Out, BatchInfo]]:
        future: Future[tuple[Out, BatchInfo]] = Future()
        self._queue.put((item, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _collect(self) -> list[tuple[In, Future[tuple[Out, BatchInfo]]]] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_size:
            remaining = deadline - time.monotonic()
            try:
                nxt = (
                    self._queue.get(timeout=max(remaining, 0.0))
                    if remaining > 0
                    else (self._queue.get_nowait())
                )
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)
                break
            batch.append(nxt)
        return batch

    def _run(self) -> None:
        while True:
            collected = self._collect()
            if collected is None:
                return
            # A task that stopped waiting (its bounded wait ran out) cancelled its future:
            # leave it out; the others are marked running, so a late cancel cannot race.
            batch = [(i, f) for i, f in collected if f.set_running_or_notify_cancel()]
            if not batch:
                continue
            items = [item for item, _ in batch]
            t0 = time.perf_counter()
            try:
                outputs = self._fn(items)
                if len(outputs) != len(items):
                    raise RuntimeError("batch function returned a wrong number of results")
            except BaseException as exc:  # handed to every waiting task, never swallowed
                log.exception("batch of %d failed", len(items))
                for _, future in batch:
                    future.set_exception(exc)
                continue
            info = BatchInfo(size=len(items), run_ms=(time.perf_counter() - t0) * 1000)
            log.debug("ran batch of %d in %.0f ms", info.size, info.run_ms)
            for (_, future), out in zip(batch, outputs, strict=True):
                future.set_result((out, info))
