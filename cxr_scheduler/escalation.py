"""Escalation: the periodic job that escalates flagged studies nobody opened.

A flagged study still unread ``CXR_ESCALATE_AFTER_S`` after it was flagged (or after it
was last released unanswered) is escalated, then again every ``CXR_ESCALATE_REPEAT_S``
until someone opens it (``cxr_db.escalations.store`` holds the clock rules). Each pass
decides and writes, in one transaction, the escalation, its audit entry and one outbox
row per webhook of ``CXR_ESCALATION_WEBHOOKS``; the results sender delivers the outbox
(``cxr_sender.escalation``), so a slow or failing webhook never holds this loop, nor
scoring.

The payload names the study, never the patient: study UID, accession number, score,
flagged at, unread for, a link to the study page, the model version and the clinical
decision support statement.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine

from cxr_common.clinical import DISCLAIMER
from cxr_db.escalations import store
from cxr_db.escalations.store import DueStudy
from cxr_scheduler.periodic import PeriodicJob

logger = logging.getLogger(__name__)

#: The ``event`` of every escalation payload (receivers may route on it).
EVENT = "cxr-triage.escalation"


def study_url(base_url: str, study_instance_uid: str) -> str:
    """The study page (``worklist``'s ``/studies/<uid>``) under ``base_url``."""
    return base_url.rstrip("/") + "/studies/" + quote(study_instance_uid, safe=".")


def payload(study: DueStudy, base_url: str) -> dict[str, Any]:
    """The JSON body POSTed for ``study``: no patient name, no patient ID."""
    return {
        "event": EVENT,
        "escalation": study.number,
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "score": study.score,
        "flagged_at": study.flagged_at.isoformat(),
        "unread_since": study.clock_started_at.isoformat(),
        "unread_for_s": study.unread_for_s,
        "escalated_at": study.escalated_at.isoformat(),
        "study_url": study_url(base_url, study.study_instance_uid),
        "model_version": study.model_version,
        "disclaimer": DISCLAIMER,
    }


class EscalationMonitor(PeriodicJob):
    """A daemon thread running :meth:`run_once` every ``interval_s`` until stopped."""

    name = "escalation"

    def __init__(
        self,
        engine: Engine,
        *,
        after_s: float,
        repeat_s: float,
        webhooks: Sequence[str],
        base_url: str,
        interval_s: float,
    ) -> None:
        self.engine = engine
        self.after_s = after_s
        self.repeat_s = repeat_s
        self.webhooks = list(webhooks)
        self.base_url = base_url
        super().__init__(interval_s)

    def _payload(self, study: DueStudy) -> Mapping[str, Any]:
        return payload(study, self.base_url)

    def run_once(self) -> int:
        """One pass; returns how many studies were escalated."""
        done = store.escalate_due(
            self.engine,
            after_s=self.after_s,
            repeat_s=self.repeat_s,
            webhooks=self.webhooks,
            payload=self._payload,
        )
        for item in done:
            logger.warning(
                "escalated flagged unread study_instance_uid=%s (escalation %d, %d webhook(s))",
                item.study_instance_uid,
                item.number,
                item.deliveries,
            )
        return len(done)
