"""Time to read, the product's headline figure: per study, derived from rows that exist
(no column of its own):

* arrival: ``studies.first_received_at`` (the first instance received);
* scored: the first active-model prediction of any of its instances
  (``min(predictions.created_at)``, ``model_role = 'active'``);
* first opened: the first ``study_view`` or ``study_claim`` in the audit log
  (``audit_log.target`` is the Study Instance UID; ``ix_audit_log_target``);
* answered: the first answer (``min(answers.created_at)``; ``ix_answers_study_created``).

Time to read = answered − arrival; time to score = scored − arrival. Windows are by
arrival (``ix_studies_first_received_at``, revision 0011). Percentiles are Postgres's
``percentile_cont`` (linear interpolation). A flagged study is *due* once it was read or
has waited longer than the read target unread: the share read within target is
(flagged, read within target) / (flagged, due), so a study that arrived a minute ago
does not count against it yet.

Used by ``cxr-triage stats``, the ops page and the metrics scrape
(:func:`time_to_read_histograms`, :func:`oldest_waiting`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    Subquery,
    and_,
    cast,
    exists,
    extract,
    func,
    or_,
    select,
    text,
)

from cxr_common.durations import duration_text, share_text
from cxr_db.audit.tables import AuditAction, AuditEntry
from cxr_db.instances.statuses import PENDING_STATUSES
from cxr_db.instances.tables import Instance, Prediction, Study
from cxr_db.reading.tables import Answer, ReadState, StudyRead

STATEMENT_TIMEOUT = "10s"
DEFAULT_READ_TARGET_S = 3600.0
#: The ops page's and ``cxr-triage stats``'s default windows (label, seconds).
DEFAULT_WINDOWS: tuple[tuple[str, float], ...] = (("24h", 24 * 3600.0), ("7d", 7 * 24 * 3600.0))
OPEN_ACTIONS = (AuditAction.STUDY_VIEW.value, AuditAction.STUDY_CLAIM.value)


def _seconds(later: Any, earlier: Any) -> ColumnElement[float]:
    return cast(extract("epoch", later - earlier), Float)


def _seconds_ago(seconds: float) -> ColumnElement[Any]:
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, float(seconds))


def _answered(studies: Subquery | None = None) -> Subquery:
    stmt = select(Answer.study_id, func.min(Answer.created_at).label("at"))
    if studies is not None:
        stmt = stmt.where(Answer.study_id.in_(select(studies.c.id)))
    return stmt.group_by(Answer.study_id).subquery("answered")


def study_times(since_s: float | None = None) -> Subquery:
    """One row per study (arrived in the last ``since_s`` seconds; None = all): study_id,
    flagged, arrival, scored_at, opened_at, answered_at (NULL where it has not happened).
    Each part is aggregated over the window's studies only."""
    arrived = select(Study.id, Study.study_instance_uid, Study.flagged, Study.first_received_at)
    if since_s is not None:
        arrived = arrived.where(Study.first_received_at >= _seconds_ago(since_s))
    studies = arrived.subquery("arrived")
    scored = (
        select(Instance.study_id, func.min(Prediction.created_at).label("at"))
        .join(Prediction, Prediction.instance_id == Instance.id)
        .where(Prediction.model_role == "active", Instance.study_id.in_(select(studies.c.id)))
        .group_by(Instance.study_id)
        .subquery("scored")
    )
    opened = (
        select(AuditEntry.target, func.min(AuditEntry.at).label("at"))
        .where(
            AuditEntry.action.in_(OPEN_ACTIONS),
            AuditEntry.target.in_(select(studies.c.study_instance_uid)),
        )
        .group_by(AuditEntry.target)
        .subquery("opened")
    )
    answered = _answered(studies)
    return (
        select(
            studies.c.id.label("study_id"),
            studies.c.flagged,
            studies.c.first_received_at.label("arrival"),
            scored.c.at.label("scored_at"),
            opened.c.at.label("opened_at"),
            answered.c.at.label("answered_at"),
        )
        .outerjoin(scored, scored.c.study_id == studies.c.id)
        .outerjoin(opened, opened.c.target == studies.c.study_instance_uid)
        .outerjoin(answered, answered.c.study_id == studies.c.id)
        .subquery("study_times")
    )


@dataclass(frozen=True)
class GroupStats:
    """Flagged or not-flagged studies of one window; seconds, None where there is none."""

    studies: int
    read: int
    read_p50_s: float | None
    read_p95_s: float | None
    scored: int
    score_p50_s: float | None
    score_p95_s: float | None


@dataclass(frozen=True)
class WindowStats:
    label: str
    window_s: float
    target_s: float
    flagged: GroupStats
    not_flagged: GroupStats
    flagged_due: int
    """Flagged studies read, or unread for longer than the target."""
    flagged_read_within_target: int

    @property
    def share_within_target(self) -> float | None:
        if self.flagged_due == 0:
            return None
        return self.flagged_read_within_target / self.flagged_due

    def table_rows(self) -> list[list[str]]:
        """Rows of :data:`TABLE_HEADER` for this window: flagged, then not flagged."""
        rows = []
        for name, group in (("flagged", self.flagged), ("not flagged", self.not_flagged)):
            within = (
                f"{share_text(self.share_within_target)} "
                f"({self.flagged_read_within_target}/{self.flagged_due})"
                if group is self.flagged
                else ""
            )
            rows.append(
                [
                    self.label,
                    name,
                    str(group.studies),
                    str(group.read),
                    duration_text(group.read_p50_s),
                    duration_text(group.read_p95_s),
                    str(group.scored),
                    duration_text(group.score_p50_s),
                    duration_text(group.score_p95_s),
                    within,
                ]
            )
        return rows

    def as_json(self) -> dict[str, object]:
        body = asdict(self)
        body["share_within_target"] = self.share_within_target
        return body


TABLE_HEADER = (
    "window",
    "studies",
    "arrived",
    "read",
    "read p50",
    "read p95",
    "scored",
    "score p50",
    "score p95",
    "read within target",
)

EMPTY = GroupStats(0, 0, None, None, 0, None, None)


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def _window(conn: Connection, label: str, window_s: float, target_s: float) -> WindowStats:
    times = study_times(window_s)
    t = (
        select(
            times,
            _seconds(times.c.answered_at, times.c.arrival).label("to_read"),
            _seconds(times.c.scored_at, times.c.arrival).label("to_score"),
        )
        .offset(0)  # each duration once per row, not once per aggregate
        .subquery("durations")
    )
    to_read, to_score = t.c.to_read, t.c.to_score
    rows = conn.execute(
        select(
            t.c.flagged,
            func.count().label("studies"),
            func.count(t.c.answered_at).label("read"),
            func.percentile_cont(0.5).within_group(to_read).label("read_p50"),
            func.percentile_cont(0.95).within_group(to_read).label("read_p95"),
            func.count(t.c.scored_at).label("scored"),
            func.percentile_cont(0.5).within_group(to_score).label("score_p50"),
            func.percentile_cont(0.95).within_group(to_score).label("score_p95"),
            func.count().filter(to_read <= target_s).label("within"),
            func.count()
            .filter(or_(t.c.answered_at.is_not(None), t.c.arrival < _seconds_ago(target_s)))
            .label("due"),
        ).group_by(t.c.flagged)
    ).all()
    groups = {
        bool(r.flagged): GroupStats(
            int(r.studies),
            int(r.read),
            _opt(r.read_p50),
            _opt(r.read_p95),
            int(r.scored),
            _opt(r.score_p50),
            _opt(r.score_p95),
        )
        for r in rows
    }
    flagged_row = next((r for r in rows if r.flagged), None)
    return WindowStats(
        label=label,
        window_s=window_s,
        target_s=target_s,
        flagged=groups.get(True, EMPTY),
        not_flagged=groups.get(False, EMPTY),
        flagged_due=int(flagged_row.due) if flagged_row else 0,
        flagged_read_within_target=int(flagged_row.within) if flagged_row else 0,
    )


def read_stats(
    engine: Engine,
    windows: Sequence[tuple[str, float]] = DEFAULT_WINDOWS,
    target_s: float = DEFAULT_READ_TARGET_S,
) -> list[WindowStats]:
    """Time to read and time to score for each window (label, seconds back from now), in
    one read-only snapshot."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.execute(text("SET TRANSACTION READ ONLY"))
            conn.execute(text(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"))
            return [_window(conn, label, seconds, target_s) for label, seconds in windows]


# --------------------------------------------------------------------------- for /metrics


def time_to_read_seconds() -> tuple[Subquery, ColumnElement[float]]:
    """Every answered study (a cumulative histogram never drops one) with ``flagged`` and
    its time to read in ``seconds`` (computed once per row: ``OFFSET 0`` keeps Postgres
    from inlining the expression into each bucket's filter)."""
    answered = _answered()
    t = (
        select(
            Study.flagged,
            _seconds(answered.c.at, Study.first_received_at).label("seconds"),
        )
        .join(answered, answered.c.study_id == Study.id)
        .offset(0)
        .subquery("answered_studies")
    )
    return t, t.c.seconds


def _age_s(ts: ColumnElement[Any]) -> ColumnElement[float]:
    return cast(extract("epoch", func.now() - ts), Float)


def oldest_waiting(conn: Connection) -> tuple[float, float]:
    """(age of the oldest flagged unread study, age of the oldest unscored study), seconds
    since arrival, 0 when none. Unread: no ``read`` state (an expired or released claim is
    unread). Unscored: an instance still pending and no active prediction yet."""
    unread = ~exists().where(StudyRead.study_id == Study.id, StudyRead.state == ReadState.READ)
    flagged = conn.execute(
        select(_age_s(func.min(Study.first_received_at))).where(Study.flagged, unread)
    ).scalar_one()
    has_pending = exists().where(
        Instance.study_id == Study.id, Instance.status.in_(PENDING_STATUSES)
    )
    scored = exists().where(
        and_(
            Instance.study_id == Study.id,
            Prediction.instance_id == Instance.id,
            Prediction.model_role == "active",
        )
    )
    unscored = conn.execute(
        select(_age_s(func.min(Study.first_received_at))).where(has_pending, ~scored)
    ).scalar_one()
    return max(float(flagged or 0.0), 0.0), max(float(unscored or 0.0), 0.0)
