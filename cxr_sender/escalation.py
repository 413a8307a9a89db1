"""Escalation delivery: the results sender POSTs the escalation outbox to its webhooks.

The scheduler writes one ``escalation_deliveries`` row per (escalation, webhook) in the
transaction that decides the escalation (``cxr_scheduler.escalation``). A daemon thread
of the results sender takes the due rows every ``CXR_ESCALATION_POLL_S``
(``FOR UPDATE SKIP LOCKED``, with a lease: a sender that dies mid-POST leaves its rows
due again), POSTs each payload as JSON and records every attempt. A 2xx answer delivers;
anything else (an error status, a refused connection, a timeout) is retried after
``cxr_queue.retries.RetryPolicy``'s backoff with jitter, up to
``CXR_ESCALATION_MAX_ATTEMPTS`` POSTs, then the row is ``failed``. The ops page shows
every open escalation with its deliveries. Redirects are not followed: a webhook is
configured with its final URL. A delivery still pending when its study is opened is
cancelled, never sent late.

The loop runs beside the results consumer, never in the scoring path: a webhook that
hangs holds at most this thread, for ``CXR_ESCALATION_TIMEOUT_S`` per POST.
"""

from __future__ import annotations

import logging
import threading

import httpx
from sqlalchemy import Engine

from cxr_db.escalations import store
from cxr_db.escalations.store import DueDelivery
from cxr_db.escalations.tables import DeliveryState
from cxr_queue.retries import RetryPolicy

logger = logging.getLogger(__name__)

USER_AGENT = "cxr-triage-escalation/1"


class EscalationDelivery:
    """Deliver the outbox every ``poll_s`` in a daemon thread until :meth:`stop`."""

    def __init__(
        self,
        engine: Engine,
        *,
        timeout_s: float,
        max_attempts: int,
        max_backoff_s: float,
        poll_s: float,
        first_backoff_s: float = 1.0,
    ) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        # attempts = 1 + retries
        self.policy = RetryPolicy(
            max_retries=max_attempts - 1, max_backoff_s=max_backoff_s, first_s=first_backoff_s
        )
        self._client = httpx.Client(
            timeout=timeout_s, follow_redirects=False, headers={"User-Agent": USER_AGENT}
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="cxr-escalation-delivery", daemon=True
        )

    def _post(self, delivery: DueDelivery) -> tuple[int | None, str | None]:
        """POST one payload: (HTTP status, error); error None means delivered."""
        try:
            answer = self._client.post(delivery.webhook, json=delivery.payload)
        except httpx.HTTPError as exc:
            return None, type(exc).__name__
        if answer.is_success:
            return answer.status_code, None
        return answer.status_code, f"HTTP {answer.status_code}"

    def deliver(self, delivery: DueDelivery) -> DeliveryState:
        """One attempt of ``delivery``, recorded; returns the delivery's new state."""
        status, error = self._post(delivery)
        retries = delivery.attempt - 1
        retry_in = None
        if error is not None and not self.policy.exhausted(retries):
            retry_in = self.policy.countdown_s(retries)
        state = store.record_attempt(
            self.engine,
            delivery,
            ok=error is None,
            http_status=status,
            error=error,
            retry_in_s=retry_in,
        )
        label = store.webhook_label(delivery.webhook)
        if state is DeliveryState.DELIVERED:
            logger.info(
                "escalation %d of study_instance_uid=%s delivered to %s",
                delivery.number,
                delivery.study_instance_uid,
                label,
            )
        elif state is DeliveryState.PENDING:
            logger.warning(
                "escalation webhook %s: attempt %d failed (%s), retry in %.1f s",
                label,
                delivery.attempt,
                error,
                retry_in or 0.0,
            )
        else:
            logger.error(
                "escalation webhook %s: given up after %d attempt(s) (%s) for "
                "study_instance_uid=%s",
                label,
                delivery.attempt,
                error,
                delivery.study_instance_uid,
            )
        return state

    def run_once(self) -> int:
        """Deliver what is due now; returns how many attempts were made."""
        lease_s = self.timeout_s * 2 + 30.0
        cancelled = store.cancel_stale_deliveries(self.engine)
        if cancelled:
            logger.info("%d escalation delivery(ies) cancelled: their study was opened", cancelled)
        done = 0
        while not self._stop.is_set():
            batch = store.take_due_deliveries(self.engine, lease_s=lease_s)
            if not batch:
                break
            for delivery in batch:
                self.deliver(delivery)
                done += 1
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - keep delivering; the next pass retries
                logger.warning("escalation delivery pass failed (%s)", type(exc).__name__)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._client.close()
