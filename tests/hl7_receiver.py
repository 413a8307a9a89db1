"""An independent HL7 receiver for the tests: an MLLP server built on the ``hl7`` library's
own asyncio MLLP streams (``hl7.mllp``), not on cxr_hl7's framing. It parses every message
with ``hl7.parse`` and answers with ``hl7.Message.create_ack``, in one of these modes:

* ``ok``: AA to every message;
* ``ae_once``: AE (with an ERR segment and a reason) to the first message of each message
  control id, AA to the next;
* ``drop_once``: reads the first message of each control id, then closes the connection
  without answering; AA to the next;
* ``reject``: AR to every message;
* ``garbage``: answers a framed block that is not HL7;
* ``silent``: reads the message and never answers (the sender's timeout ends it).

Runs its event loop in a daemon thread on a free loopback port; :meth:`stop` closes it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import hl7
from hl7.mllp import start_hl7_server

MODES = ("ok", "ae_once", "drop_once", "reject", "garbage", "silent")
AE_REASON = "Order not found: try again"
AR_REASON = "Unsupported message"


@dataclass
class Hl7Receiver:
    mode: str = "ok"
    port: int = 0
    messages: list[hl7.Message] = field(default_factory=list)
    """Every message that arrived, parsed, in order (retries included)."""
    answered: list[str] = field(default_factory=list)
    """What was answered to each message: AA, AE, AR, dropped, garbage, silent."""
    _seen: Counter[str] = field(default_factory=Counter)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: Any = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def destination(self) -> str:
        return f"127.0.0.1:{self.port}"

    def accepted(self) -> list[hl7.Message]:
        """The messages answered AA."""
        with self._lock:
            return [m for m, a in zip(self.messages, self.answered, strict=True) if a == "AA"]

    def _answer_for(self, control_id: str) -> str:
        first = self._seen[control_id] == 0
        self._seen[control_id] += 1
        if self.mode == "ae_once":
            return "AE" if first else "AA"
        if self.mode == "drop_once":
            return "dropped" if first else "AA"
        return {"ok": "AA", "reject": "AR", "garbage": "garbage", "silent": "silent"}[self.mode]

    async def _client(self, reader: Any, writer: Any) -> None:
        try:
            while True:
                try:
                    message = await reader.readmessage()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                control_id = str(message.segment("MSH")(10))
                with self._lock:
                    answer = self._answer_for(control_id)
                    self.messages.append(message)
                    self.answered.append(answer)
                if answer == "dropped":
                    return  # closes the connection without an ACK
                if answer == "silent":
                    await asyncio.sleep(3600)
                    return
                if answer == "garbage":
                    writer.writeblock(b"this is not an acknowledgement")
                else:
                    ack = message.create_ack(answer, message_id=f"ACK{len(self.messages)}")
                    text = str(ack).rstrip("\r")
                    if answer == "AE":
                        text += (
                            f"|Error\rERR|||207^Application internal error^HL70357|E||||{AE_REASON}"
                        )
                    elif answer == "AR":
                        text += f"|{AR_REASON}"
                    writer.writeblock(text.encode("utf-8"))
                await writer.drain()
        finally:
            writer.close()

    def start(self) -> Hl7Receiver:
        started = threading.Event()

        async def main() -> None:
            self._server = await start_hl7_server(self._client, "127.0.0.1", 0, encoding="utf-8")
            self.port = int(self._server.sockets[0].getsockname()[1])
            started.set()
            async with self._server:
                await self._server.serve_forever()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(main())
            except asyncio.CancelledError:
                pass
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name=f"hl7-{self.mode}", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the HL7 test receiver did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            loop, server = self._loop, self._server

            def close() -> None:
                server.close()
                for task in asyncio.all_tasks(loop):
                    task.cancel()

            loop.call_soon_threadsafe(close)
        if self._thread is not None:
            self._thread.join(10)


@contextmanager
def running_receiver(mode: str = "ok") -> Iterator[Hl7Receiver]:
    receiver = Hl7Receiver(mode).start()
    try:
        yield receiver
    finally:
        receiver.stop()
