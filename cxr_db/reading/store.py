"""Read state and answers: claim a study, release it, record an answer, list read states,
export answers as training labels. Each function is one transaction; each change is
audited in that same transaction, so an answer and its audit row commit or vanish together.

A study is ``unread`` (no ``study_reads`` row, or a released or expired claim),
``in_progress`` (claimed by a user until ``claim_expires_at``; other users see who) or
``read`` (an answer was recorded). An expired claim is claimable by anyone, and an answer
may be recorded on it by anyone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import aliased

from cxr_db.accounts.store import TokenInfo, UserInfo
from cxr_db.accounts.tables import ApiToken, User
from cxr_db.audit import store as audit
from cxr_db.audit.store import Actor, AuditEvent
from cxr_db.audit.tables import ActorKind, AuditAction
from cxr_db.errors import (
    InvalidAnswerError,
    StudyAlreadyReadError,
    StudyClaimedError,
    StudyNotFoundError,
)
from cxr_db.instances.tables import Study
from cxr_db.reading.tables import Answer, Finding, ReadState, StudyRead

log = logging.getLogger(__name__)

DEFAULT_CLAIM_TIMEOUT = timedelta(minutes=15)
MAX_NOTE_LENGTH = 4000


@dataclass(frozen=True)
class Reader:
    """Who reads: a signed-in user, or an API token recording answers for an integration."""

    name: str
    kind: ActorKind
    user_id: int | None = None
    token_id: int | None = None

    @classmethod
    def from_user(cls, user: UserInfo) -> Reader:
        return cls(user.username, ActorKind.USER, user_id=user.id)

    @classmethod
    def from_token(cls, token: TokenInfo) -> Reader:
        return cls(token.name, ActorKind.TOKEN, token_id=token.id)

    def actor(self, client_addr: str | None = None) -> Actor:
        return Actor(self.name, self.kind, client_addr)


@dataclass(frozen=True)
class ReadInfo:
    """The read state of one study as a worklist or study page shows it."""

    study_instance_uid: str
    state: ReadState
    claimed_by: str | None  # user name while in progress
    claim_expires_at: datetime | None
    read_by: str | None  # user or token name once read
    read_at: datetime | None
    finding: Finding | None  # the latest answer's

    def as_json(self) -> dict[str, object]:
        return {
            "read_state": self.state.value,
            "claimed_by": self.claimed_by,
            "claim_expires_at": self.claim_expires_at.isoformat()
            if self.claim_expires_at
            else None,
            "finding": self.finding.value if self.finding else None,
            "read_by": self.read_by,
            "read_at": self.read_at.isoformat() if self.read_at else None,
        }


@dataclass(frozen=True)
class ClaimResult:
    claimed: bool  # False: someone else holds it, or it is already read (see ``read``)
    read: ReadInfo


@dataclass(frozen=True)
class AnswerRecord:
    id: int
    study_instance_uid: str
    reader: str
    finding: Finding
    note: str | None
    model_version: str | None
    score: float | None
    created_at: datetime


def effective_state(now: ColumnElement[Any] | datetime | None = None) -> ColumnElement[str]:
    """SQL for a study's read state over ``studies LEFT JOIN study_reads``: no row and
    expired claims are ``unread``. Worklist queries filter and show this expression."""
    at: Any = func.now() if now is None else now
    return case(
        (StudyRead.state.is_(None), literal(ReadState.UNREAD.value)),
        (
            and_(
                StudyRead.state == ReadState.IN_PROGRESS.value,
                StudyRead.claim_expires_at <= at,
            ),
            literal(ReadState.UNREAD.value),
        ),
        else_=StudyRead.state,
    )


def _db_now(conn: Connection, now: datetime | None) -> datetime:
    if now is not None:
        return now
    value: datetime = conn.execute(select(func.now())).scalar_one()
    return value


def _lock_read_row(conn: Connection, study_instance_uid: str) -> int:
    """The study's id, with its ``study_reads`` row created if missing and locked."""
    study_id = conn.execute(
        select(Study.id).where(Study.study_instance_uid == study_instance_uid)
    ).scalar_one_or_none()
    if study_id is None:
        raise StudyNotFoundError(f"no study {study_instance_uid}")
    conn.execute(
        pg_insert(StudyRead)
        .values(study_id=study_id, state=ReadState.UNREAD.value)
        .on_conflict_do_nothing(index_elements=[StudyRead.study_id])
    )
    conn.execute(select(StudyRead.study_id).where(StudyRead.study_id == study_id).with_for_update())
    return int(study_id)


def with_read_state(stmt: Select[Any], at: ColumnElement[Any] | datetime | None) -> Select[Any]:
    """``stmt``, a select over ``studies``, with each study's read state: ``read_state``
    (:func:`effective_state` at ``at``), ``claimed_by`` and ``claim_expires_at`` (while in
    progress), ``read_by`` (the user or token name), ``read_at`` and ``finding`` (the latest
    answer's). The one read-state query: the worklist's reads use it, and so does this
    module."""
    claimer = aliased(User, name="claimer")
    reader = aliased(User, name="reader")
    latest_finding = (
        select(Answer.finding)
        .where(Answer.study_id == Study.id)
        .order_by(Answer.created_at.desc(), Answer.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    state = effective_state(at)
    in_progress = state == ReadState.IN_PROGRESS.value
    return (
        stmt.add_columns(
            state.label("read_state"),
            case((in_progress, claimer.username)).label("claimed_by"),
            case((in_progress, StudyRead.claim_expires_at)).label("claim_expires_at"),
            func.coalesce(reader.username, ApiToken.name).label("read_by"),
            StudyRead.read_at,
            latest_finding.label("finding"),
        )
        .outerjoin(StudyRead, StudyRead.study_id == Study.id)
        .outerjoin(claimer, claimer.id == StudyRead.claimed_by)
        .outerjoin(reader, reader.id == StudyRead.read_by)
        .outerjoin(ApiToken, ApiToken.id == StudyRead.read_by_token)
    )


def _reads_stmt(at: datetime) -> Select[Any]:
    return with_read_state(select(Study.study_instance_uid).select_from(Study), at)


def _read_info(row: Any) -> ReadInfo:
    return ReadInfo(
        study_instance_uid=row.study_instance_uid,
        state=ReadState(row.read_state),
        claimed_by=row.claimed_by,
        claim_expires_at=row.claim_expires_at,
        read_by=row.read_by,
        read_at=row.read_at,
        finding=Finding(row.finding) if row.finding else None,
    )


def _read_one(conn: Connection, study_instance_uid: str, at: datetime) -> ReadInfo:
    row = conn.execute(
        _reads_stmt(at).where(Study.study_instance_uid == study_instance_uid)
    ).one_or_none()
    if row is None:
        raise StudyNotFoundError(f"no study {study_instance_uid}")
    return _read_info(row)


def read_state(engine: Engine, study_instance_uid: str, *, now: datetime | None = None) -> ReadInfo:
    """The read state of one study (raises ``StudyNotFoundError``)."""
    with engine.connect() as conn:
        return _read_one(conn, study_instance_uid, _db_now(conn, now))


def reads_for(
    engine: Engine, study_instance_uids: Iterable[str], *, now: datetime | None = None
) -> dict[str, ReadInfo]:
    """Read states for a page of studies, by Study Instance UID (unknown UIDs are absent)."""
    uids = list(dict.fromkeys(study_instance_uids))
    if not uids:
        return {}
    with engine.connect() as conn:
        at = _db_now(conn, now)
        rows = conn.execute(_reads_stmt(at).where(Study.study_instance_uid.in_(uids))).all()
    return {r.study_instance_uid: _read_info(r) for r in rows}


def claim_study(
    engine: Engine,
    study_instance_uid: str,
    user: UserInfo,
    *,
    timeout: timedelta = DEFAULT_CLAIM_TIMEOUT,
    client_addr: str | None = None,
    now: datetime | None = None,
) -> ClaimResult:
    """Claim a study for reading until ``now + timeout`` (a user's own claim is renewed).

    Not claimed, with the state that says why, when another user's claim is still active
    or the study is already read.
    """
    with engine.begin() as conn:
        at = _db_now(conn, now)
        study_id = _lock_read_row(conn, study_instance_uid)
        current = _read_one(conn, study_instance_uid, at)
        if current.state is ReadState.READ or (
            current.state is ReadState.IN_PROGRESS and current.claimed_by != user.username
        ):
            return ClaimResult(False, current)
        expires = at + timeout
        conn.execute(
            update(StudyRead)
            .where(StudyRead.study_id == study_id)
            .values(
                state=ReadState.IN_PROGRESS.value,
                claimed_by=user.id,
                claimed_at=at,
                claim_expires_at=expires,
                updated_at=at,
            )
        )
        audit.append(
            conn,
            AuditEvent(
                AuditAction.STUDY_CLAIM,
                user.actor(client_addr),
                study_instance_uid,
                {"expires_at": expires.isoformat()},
            ),
        )
        return ClaimResult(True, _read_one(conn, study_instance_uid, at))


def release_study(
    engine: Engine,
    study_instance_uid: str,
    user: UserInfo,
    *,
    client_addr: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Give back one's own claim (the study is unread again). False when not holding it."""
    with engine.begin() as conn:
        at = _db_now(conn, now)
        study_id = _lock_read_row(conn, study_instance_uid)
        released = conn.execute(
            update(StudyRead)
            .where(
                StudyRead.study_id == study_id,
                StudyRead.state == ReadState.IN_PROGRESS.value,
                StudyRead.claimed_by == user.id,
            )
            .values(
                state=ReadState.UNREAD.value,
                claimed_by=None,
                claimed_at=None,
                claim_expires_at=None,
                updated_at=at,
            )
        ).rowcount
        if released:
            audit.append(
                conn,
                AuditEvent(AuditAction.STUDY_RELEASE, user.actor(client_addr), study_instance_uid),
            )
    return bool(released)


@dataclass(frozen=True)
class _Shown:
    """What a study page shows of the model (only the active model's predictions)."""

    model_version: str | None
    score: float | None  # the triage score (``studies.score``); None when none triaged
    shadow_score: float | None  # highest score made outside the validated population


def _shown_model_output(conn: Connection, study_id: int) -> _Shown:
    """The study's triage score, the newest **active**-model version and its highest shadow
    score (outside the validated population): what a page showed by default. A shadow
    model's predictions (``model_role = 'shadow'``) are never what a reader saw."""
    row = conn.execute(
        text(
            "SELECT s.score, "
            "(SELECT p.model_version FROM predictions p "
            "JOIN instances i ON i.id = p.instance_id "
            "WHERE i.study_id = s.id AND p.model_role = 'active' "
            "ORDER BY p.created_at DESC, p.id DESC LIMIT 1) AS model_version, "
            "(SELECT max(p.probability) FROM predictions p "
            "JOIN instances i ON i.id = p.instance_id "
            "WHERE i.study_id = s.id AND p.model_role = 'active' AND NOT p.triage) "
            "AS shadow_score "
            "FROM studies s WHERE s.id = :id"
        ),
        {"id": study_id},
    ).one()
    return _Shown(row.model_version, row.score, row.shadow_score)


def _validated(
    finding: Finding | str, note: str | None, model_version: str | None, score: float | None
) -> tuple[Finding, str | None]:
    try:
        checked = Finding(finding)
    except ValueError as exc:
        allowed = ", ".join(f.value for f in Finding)
        raise InvalidAnswerError(f"finding must be one of {allowed}") from exc
    cleaned = (note or "").strip() or None
    if cleaned is not None and len(cleaned) > MAX_NOTE_LENGTH:
        raise InvalidAnswerError(f"note is longer than {MAX_NOTE_LENGTH} characters")
    if score is not None and not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise InvalidAnswerError("score must be between 0 and 1")
    if model_version is not None and len(model_version) > 64:
        raise InvalidAnswerError("model_version is longer than 64 characters")
    return checked, cleaned


def record_answer(
    engine: Engine,
    study_instance_uid: str,
    reader: Reader,
    finding: Finding | str,
    *,
    note: str | None = None,
    model_version: str | None = None,
    score: float | None = None,
    client_addr: str | None = None,
    now: datetime | None = None,
) -> AnswerRecord:
    """Save an answer with the model version and score the reader saw, mark the study read
    and audit it, all in one transaction.

    When neither ``model_version`` nor ``score`` is given (an integration that did not
    show one), the study's current triage score and the newest **active**-model version
    are recorded (never a shadow model's).

    Outside the validated population (issue 8): a study whose every score was made in
    shadow has no triage score, and the page shows its shadow score greyed, as "not used
    for triage". ``answers.score`` holds only a triage score, so such an answer stores
    ``score`` NULL (what the page posts, too) and the audit entry records the shadow score
    as such: ``shadow_score`` and ``score_used_for_triage: false``. The answers export
    takes its scores from the active model's predictions per instance, shadow-scored
    ones included, so a site can validate the model on the population it was not
    validated for. Refused
    while another user's claim is active (``StudyClaimedError``) and on a study already
    read (``StudyAlreadyReadError``). The note is stored but never audited or logged.
    """
    checked, cleaned = _validated(finding, note, model_version, score)
    with engine.begin() as conn:
        at = _db_now(conn, now)
        study_id = _lock_read_row(conn, study_instance_uid)
        current = _read_one(conn, study_instance_uid, at)
        if current.state is ReadState.READ:
            raise StudyAlreadyReadError(study_instance_uid, current.read_by or "-")
        if current.state is ReadState.IN_PROGRESS and not (
            reader.kind is ActorKind.USER and current.claimed_by == reader.name
        ):
            raise StudyClaimedError(study_instance_uid, current.claimed_by or "-")
        shown = _shown_model_output(conn, study_id)
        if model_version is None and score is None:
            model_version, score = shown.model_version, shown.score
        seen: dict[str, str | int | float | bool | None] = {
            "score_used_for_triage": shown.score is not None
        }
        if shown.score is None and shown.shadow_score is not None:
            seen["shadow_score"] = shown.shadow_score
        answer_id = conn.execute(
            insert(Answer)
            .values(
                study_id=study_id,
                user_id=reader.user_id,
                token_id=reader.token_id,
                finding=checked.value,
                note=cleaned,
                model_version=model_version,
                score=score,
                created_at=at,
            )
            .returning(Answer.id)
        ).scalar_one()
        audit.append(
            conn,
            AuditEvent(
                AuditAction.ANSWER,
                reader.actor(client_addr),
                study_instance_uid,
                {
                    "answer_id": int(answer_id),
                    "finding": checked.value,
                    "model_version": model_version,
                    "score": score,
                }
                | seen,
            ),
        )
        conn.execute(
            update(StudyRead)
            .where(StudyRead.study_id == study_id)
            .values(
                state=ReadState.READ.value,
                claimed_by=None,
                claimed_at=None,
                claim_expires_at=None,
                read_by=reader.user_id,
                read_by_token=reader.token_id,
                read_at=at,
                updated_at=at,
            )
        )
    log.info("answer recorded for study %s by %s", study_instance_uid, reader.name)
    return AnswerRecord(
        id=int(answer_id),
        study_instance_uid=study_instance_uid,
        reader=reader.name,
        finding=checked,
        note=cleaned,
        model_version=model_version,
        score=score,
        created_at=at,
    )


def answers_for(engine: Engine, study_instance_uid: str) -> list[AnswerRecord]:
    """Every answer recorded for a study, oldest first (the study page's history)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Answer.id,
                Study.study_instance_uid,
                func.coalesce(User.username, ApiToken.name).label("reader"),
                Answer.finding,
                Answer.note,
                Answer.model_version,
                Answer.score,
                Answer.created_at,
            )
            .join(Study, Study.id == Answer.study_id)
            .outerjoin(User, User.id == Answer.user_id)
            .outerjoin(ApiToken, ApiToken.id == Answer.token_id)
            .where(Study.study_instance_uid == study_instance_uid)
            .order_by(Answer.created_at, Answer.id)
        ).all()
    return [
        AnswerRecord(
            id=int(r.id),
            study_instance_uid=r.study_instance_uid,
            reader=r.reader or "-",
            finding=Finding(r.finding),
            note=r.note,
            model_version=r.model_version,
            score=r.score,
            created_at=r.created_at,
        )
        for r in rows
    ]


# ------------------------------------------------------------------ answers as labels

LABELS_COLUMNS = (
    "path",
    "label",
    "finding",
    "score",
    "model_version",
    "study_instance_uid",
    "sop_instance_uid",
    "read_by",
    "read_at",
)
FINDING_LABELS = {Finding.PNEUMONIA: 1, Finding.NO_PNEUMONIA: 0}  # ``other`` has no label


@dataclass(frozen=True)
class LabelRow:
    """One scored instance of a read study with the study's answer as its label."""

    path: str
    label: int
    finding: Finding
    score: float
    model_version: str
    study_instance_uid: str
    sop_instance_uid: str
    read_by: str
    read_at: datetime

    def as_csv_row(self) -> list[str]:
        return [
            self.path,
            str(self.label),
            self.finding.value,
            repr(float(self.score)),
            self.model_version,
            self.study_instance_uid,
            self.sop_instance_uid,
            self.read_by,
            self.read_at.isoformat(),
        ]


@dataclass
class LabelExport:
    """Counts for what an export left out, filled in while its rows are consumed."""

    rows: int = 0
    studies_other: int = 0  # read as ``other``: no 0/1 label, left out


def storage_path(storage_uri: str) -> str:
    """A local path for a ``file://`` storage URI (other schemes are kept as URIs)."""
    parsed = urlparse(storage_uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return storage_uri


_LABELS_SQL = text(
    """
    WITH latest AS (
      SELECT DISTINCT ON (a.study_id) a.study_id, a.finding, a.model_version,
             coalesce(u.username, t.name) AS read_by, a.created_at AS read_at
      FROM answers a
      JOIN study_reads r ON r.study_id = a.study_id AND r.state = 'read'
      LEFT JOIN users u ON u.id = a.user_id
      LEFT JOIN api_tokens t ON t.id = a.token_id
      ORDER BY a.study_id, a.created_at DESC, a.id DESC
    )
    SELECT i.storage_uri, i.sop_instance_uid, s.study_instance_uid, latest.finding,
           latest.read_by, latest.read_at, p.probability, p.model_version
    FROM latest
    JOIN studies s ON s.id = latest.study_id
    JOIN instances i ON i.study_id = s.id AND i.status = 'done'
    JOIN LATERAL (
      SELECT p.probability, p.model_version FROM predictions p
      WHERE p.instance_id = i.id AND p.model_role = 'active'
      ORDER BY (p.model_version IS NOT DISTINCT FROM latest.model_version) DESC,
               p.created_at DESC, p.id DESC
      LIMIT 1
    ) p ON true
    ORDER BY s.id, i.id
    """
)


def iter_label_rows(engine: Engine, counts: LabelExport | None = None) -> Iterator[LabelRow]:
    """Every scored instance of every read study, labelled by the study's latest answer:
    1 for ``pneumonia``, 0 for ``no_pneumonia``. Studies answered ``other`` are left out
    (counted in ``counts.studies_other``). The score is the instance's prediction by the
    model version the reader saw, else its newest, of the **active** model only
    (``model_role = 'active'``: a shadow model's scores are never exported as what was
    seen). An instance outside the validated population is exported with the active
    model's shadow score: that is the evidence ``cxr-triage validate`` needs to widen the
    population."""
    counts = counts if counts is not None else LabelExport()
    other_studies: set[str] = set()
    with engine.connect() as conn:
        for row in conn.execute(_LABELS_SQL.execution_options(yield_per=1000)):
            finding = Finding(row.finding)
            label = FINDING_LABELS.get(finding)
            if label is None:
                other_studies.add(row.study_instance_uid)
                counts.studies_other = len(other_studies)
                continue
            counts.rows += 1
            yield LabelRow(
                path=storage_path(row.storage_uri),
                label=label,
                finding=finding,
                score=float(row.probability),
                model_version=row.model_version,
                study_instance_uid=row.study_instance_uid,
                sop_instance_uid=row.sop_instance_uid,
                read_by=row.read_by or "",
                read_at=row.read_at,
            )


__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "FINDING_LABELS",
    "LABELS_COLUMNS",
    "AnswerRecord",
    "ClaimResult",
    "InvalidAnswerError",
    "LabelExport",
    "LabelRow",
    "ReadInfo",
    "Reader",
    "answers_for",
    "claim_study",
    "effective_state",
    "iter_label_rows",
    "read_state",
    "reads_for",
    "record_answer",
    "release_study",
    "storage_path",
    "with_read_state",
]
