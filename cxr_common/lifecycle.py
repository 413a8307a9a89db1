"""Process lifecycle: stop cleanly on SIGINT (Ctrl-C) or SIGTERM (``docker stop``, systemd).

Every long-running process (listener, web worklist, ``cxr-triage up``) runs inside
``stop_on_signals`` and waits on the event it yields::

    with stop_on_signals("the listener") as stop:
        handle = start_listener(...)
        stop.wait()
        handle.shutdown()
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(
    what: str, on_stop: Callable[[], None] | None = None
) -> Iterator[threading.Event]:
    """Yield an event that SIGINT or SIGTERM sets (and call ``on_stop`` then, e.g. to tell
    a server loop to exit); the previous handlers are restored on exit. Main thread only,
    as for ``signal.signal``."""
    stop = threading.Event()

    def _stop() -> None:
        if on_stop is not None:
            on_stop()
        stop.set()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("%s received: stopping %s", signal.Signals(signum).name, what)
        # Not ``stop.set()`` here: the handler runs in the main thread between two
        # bytecodes, possibly while that thread holds the event's (non-reentrant) lock
        # inside ``stop.wait(...)``; setting it here would deadlock the process (seen: a
        # supervisor that never stopped its children). A thread sets it once the main
        # thread lets go.
        threading.Thread(target=_stop, name="stop-on-signal", daemon=True).start()

    previous = {sig: signal.signal(sig, _on_signal) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
