"""Every read the worklist, the CLI and the JSON API make, as small functions over an Engine.

Studies are read through one query (``_studies``): the worklist is all of them in triage
order, a study page is one of them plus its instances. A study's status is
``statuses.study_status_of`` over its instances, and the reasons of its failed and
not-eligible instances come back as data (``StatusReason``), never as text to parse;
presentation formats them. Writes live in ``cxr_db.instances.writes``.

Each study also carries its read state (``cxr_db.reading.store.with_read_state``: no row
or an expired claim is unread), who claimed or read it, and the latest answer's finding. The
worklist is read a page at a time (``worklist_page``) with a keyset cursor, so however
many studies wait, every one of them is reachable and a page is as cheap as the first.
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    Integer,
    Row,
    Select,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by

from cxr_common.population import study_population
from cxr_db.escalations.store import EscalationMark, escalation_marks
from cxr_db.instances.statuses import (
    PENDING_STATUSES,
    REASON_STATUSES,
    InstanceStatus,
    StatusReason,
    study_status_of,
)
from cxr_db.instances.tables import Instance, Prediction, Study
from cxr_db.reading.store import with_read_state
from cxr_db.reading.tables import Finding, ReadState
from cxr_db.registry.tables import ModelRole
from cxr_db.results.store import StudyResults, study_results

ACTIVE_ROLE = ModelRole.ACTIVE.value
"""Predictions of shadow models (``model_role = 'shadow'``) are kept out of every read here."""


@dataclass(frozen=True)
class WorklistEntry:
    """One study as the worklist shows it."""

    study_instance_uid: str
    accession_number: str | None
    status: InstanceStatus
    reasons: tuple[StatusReason, ...]
    """Distinct reasons of the study's failed and not-eligible instances, failed first."""
    score: float | None
    flagged: bool
    model_version: str | None
    received_at: datetime
    scored_at: datetime | None
    instances: int
    heatmap_sop_instance_uids: tuple[str, ...]
    """Instances with a heatmap, highest probability first."""
    population: str | None = None
    """``cxr_common.population.study_population`` over the scored instances (None: none)."""
    population_reason: str | None = None
    """The reason of an instance with that population (the check's words, for staff)."""
    shadow_score: float | None = None
    """Highest score of the active model that may not triage (outside the population):
    shown greyed, never used for order or flag."""
    score_lower: float | None = None
    """The interval of the score shown (``score``, else ``shadow_score``): that of the
    highest triaging prediction, else of the highest shadow one (revision 0010; None:
    its calibration had none)."""
    score_upper: float | None = None
    read_state: ReadState = ReadState.UNREAD
    claimed_by: str | None = None
    """The user reading it, while ``in_progress``."""
    claim_expires_at: datetime | None = None
    finding: Finding | None = None
    """The latest answer's finding."""
    read_by: str | None = None
    """The user (or API token) that answered, once ``read``."""
    read_at: datetime | None = None

    results: StudyResults | None = None
    """Results back to PACS (``study_results``)."""

    escalated: bool = False
    """An escalation is open: flagged, still unread since it was escalated."""
    escalations: int = 0
    """Escalations so far (``cxr_db.escalations``)."""


class ReadView(enum.StrEnum):
    """Which studies a worklist page lists."""

    UNREAD = "unread"  # not read yet: unread and in progress (shown as such), triage order
    READ = "read"  # answered, most recently read first
    ALL = "all"  # every study, triage order


#: Statuses of studies the model could not score: they still need a human read.
UNSCORED_FINAL = (InstanceStatus.FAILED, InstanceStatus.NOT_ELIGIBLE)


@dataclass(frozen=True)
class WorklistQuery:
    """One page of the worklist: a view, optional filters, a size and where to start."""

    view: ReadView = ReadView.UNREAD
    search: str | None = None
    """Accession number (part of it, any case), Study Instance UID (exact or prefix) or
    the reader's name (part of it)."""
    statuses: tuple[InstanceStatus, ...] = ()
    """Only studies with one of these statuses (empty: any)."""
    exclude_statuses: tuple[InstanceStatus, ...] = ()
    limit: int = 50
    after: str | None = None
    """The cursor of the previous page (``WorklistPage.next_cursor``)."""


@dataclass(frozen=True)
class WorklistPage:
    entries: list[WorklistEntry]
    next_cursor: str | None
    """Pass as ``WorklistQuery.after`` for the next page; None on the last page."""


@dataclass(frozen=True)
class UnreadCounts:
    """How many studies wait to be read, by the worklist's priority classes."""

    flagged: int = 0
    unscored: int = 0  # failed or not eligible: no score, a human reads them unaided
    pending: int = 0  # received, queued or being scored
    routine: int = 0  # scored below the threshold
    in_progress: int = 0  # of the above, claimed by someone now

    @property
    def total(self) -> int:
        return self.flagged + self.unscored + self.pending + self.routine


class InvalidCursorError(ValueError):
    """A worklist cursor that this view did not hand out (edited, or from another view)."""


@dataclass(frozen=True)
class InstanceDetail:
    """One instance of a study with its newest prediction, if it was scored."""

    sop_instance_uid: str
    status: InstanceStatus
    reason: str | None
    view_position: str | None
    received_at: datetime
    probability: float | None
    threshold: float | None
    flagged: bool | None
    model_version: str | None
    scored_at: datetime | None
    has_heatmap: bool
    population: str | None = None
    population_reason: str | None = None
    triage: bool | None = None
    """False: the score is shown in shadow (outside the validated population)."""
    storage_uri: str | None = None
    """Where the stored file is (for the study page's header read; never shown)."""
    score_lower: float | None = None
    """The probability's interval (revision 0010; None: its calibration had none)."""
    score_upper: float | None = None

    @property
    def reasons(self) -> tuple[StatusReason, ...]:
        """This instance's reason in the shape a study's reasons have."""
        if self.status in REASON_STATUSES:
            return (StatusReason(self.status, self.reason),)
        return ()


@dataclass(frozen=True)
class StudyDetail:
    """One study (as on the worklist) and its instances, highest probability first."""

    study: WorklistEntry
    instances: tuple[InstanceDetail, ...]


def _triage_keys() -> tuple[Any, ...]:
    """The triage order as ascending keys (so a row comparison can resume after a row):
    flagged first; then unscored studies (pending, failed, not eligible: they still need
    a human read) and scored ones by score, highest first; then arrival; then id."""
    return (
        case((Study.flagged, literal(0)), else_=literal(1)),
        func.coalesce(-Study.score, literal(-2.0)),
        Study.first_received_at,
        Study.id,
    )


def _studies(at: datetime | None = None) -> Select[Any]:
    """Every study with its roll-up of instances and predictions and its read state, in
    triage order (``_triage_keys``). ``at`` is the instant claims are judged at
    (default: the database's ``now()``)."""
    reason_order = (Instance.status, Instance.reason)
    has_reason = Instance.status.in_(REASON_STATUSES)
    agg = (
        select(
            Instance.study_id,
            func.count().label("instances"),
            study_status_of(Instance.status).label("status"),
            func.array_agg(aggregate_order_by(Instance.status, *reason_order))
            .filter(has_reason)
            .label("reason_statuses"),
            func.array_agg(aggregate_order_by(Instance.reason, *reason_order))
            .filter(has_reason)
            .label("reason_texts"),
            *_population_columns(),
        )
        .group_by(Instance.study_id)
        .subquery("agg")
    )
    pred = (
        select(
            Instance.study_id,
            func.max(Prediction.created_at).label("scored_at"),
            func.array_agg(
                aggregate_order_by(Prediction.model_version, Prediction.created_at.desc())
            )[1].label("model_version"),
            func.array_agg(
                aggregate_order_by(Instance.sop_instance_uid, Prediction.probability.desc())
            )
            .filter(Prediction.heatmap_png.is_not(None))
            .label("heatmaps"),
            func.max(Prediction.probability)
            .filter(Prediction.triage.is_(False))
            .label("shadow_score"),
            *(
                func.array_agg(
                    aggregate_order_by(
                        bound, Prediction.triage.desc(), Prediction.probability.desc()
                    )
                )[1].label(bound.key)
                for bound in (Prediction.score_lower, Prediction.score_upper)
            ),
        )
        .join(Instance, Instance.id == Prediction.instance_id)
        .where(Prediction.model_role == ACTIVE_ROLE)
        .group_by(Instance.study_id)
        .subquery("pred")
    )
    flag_key, score_key, *_ = _triage_keys()
    stmt = (
        select(
            Study.id,
            Study.study_instance_uid,
            Study.accession_number,
            agg.c.status,
            agg.c.reason_statuses,
            agg.c.reason_texts,
            Study.score,
            Study.flagged,
            pred.c.model_version,
            Study.first_received_at.label("received_at"),
            pred.c.scored_at,
            agg.c.instances,
            pred.c.heatmaps,
            agg.c.populations,
            agg.c.population_reasons,
            pred.c.shadow_score,
            pred.c.score_lower,
            pred.c.score_upper,
            flag_key.label("k_flag"),
            score_key.label("k_score"),
        )
        .join(agg, agg.c.study_id == Study.id)
        .outerjoin(pred, pred.c.study_id == Study.id)
        .order_by(*_triage_keys())
    )
    return with_read_state(stmt, at)


def _reasons(
    statuses: Sequence[str] | None, texts: Sequence[str | None] | None
) -> tuple[StatusReason, ...]:
    pairs = zip(statuses or (), texts or (), strict=True)
    return tuple(dict.fromkeys(StatusReason(InstanceStatus(s), r) for s, r in pairs))


def _population_columns() -> tuple[Any, Any]:
    """A study's scored instances' populations and reasons, as two arrays in one order."""
    assessed = Instance.population.is_not(None)
    return (
        func.array_agg(aggregate_order_by(Instance.population, Instance.id))
        .filter(assessed)
        .label("populations"),
        func.array_agg(aggregate_order_by(Instance.population_reason, Instance.id))
        .filter(assessed)
        .label("population_reasons"),
    )


def _study_population(
    populations: Sequence[str] | None, reasons: Sequence[str | None] | None
) -> tuple[str | None, str | None]:
    pairs = list(zip(populations or (), reasons or (), strict=True))
    status = study_population(p for p, _ in pairs)
    if status is None:
        return None, None
    return status.value, next((r for p, r in pairs if p == status.value), None)


def _entry(r: Row[Any]) -> WorklistEntry:
    population, population_reason = _study_population(r.populations, r.population_reasons)
    return WorklistEntry(
        study_instance_uid=r.study_instance_uid,
        accession_number=r.accession_number,
        status=r.status,
        reasons=_reasons(r.reason_statuses, r.reason_texts),
        score=r.score,
        flagged=r.flagged,
        model_version=r.model_version,
        received_at=r.received_at,
        scored_at=r.scored_at,
        instances=r.instances,
        heatmap_sop_instance_uids=tuple(r.heatmaps or ()),
        population=population,
        population_reason=population_reason,
        shadow_score=r.shadow_score,
        score_lower=r.score_lower,
        score_upper=r.score_upper,
        read_state=ReadState(r.read_state),
        claimed_by=r.claimed_by,
        claim_expires_at=r.claim_expires_at,
        finding=Finding(r.finding) if r.finding else None,
        read_by=r.read_by,
        read_at=r.read_at,
    )


def worklist(
    engine: Engine, limit: int = 1000, view: ReadView = ReadView.ALL
) -> list[WorklistEntry]:
    """The first ``limit`` studies of ``view`` (every study, triage order, by default)."""
    return worklist_page(engine, WorklistQuery(view=view, limit=limit)).entries


def iter_worklist(engine: Engine, query: WorklistQuery) -> list[WorklistEntry]:
    """Every study of ``query``'s view, all pages (for the CLI and exports)."""
    out: list[WorklistEntry] = []
    page = worklist_page(engine, query)
    out.extend(page.entries)
    while page.next_cursor is not None:
        page = worklist_page(
            engine,
            WorklistQuery(
                view=query.view,
                search=query.search,
                statuses=query.statuses,
                exclude_statuses=query.exclude_statuses,
                limit=query.limit,
                after=page.next_cursor,
            ),
        )
        out.extend(page.entries)
    return out


def _encode_cursor(view: ReadView, keys: Sequence[Any]) -> str:
    values = [k.isoformat() if isinstance(k, datetime) else k for k in keys]
    raw = json.dumps({"v": view.value, "k": values}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(view: ReadView, cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        if data["v"] != view.value:
            raise InvalidCursorError("this cursor belongs to another worklist view")
        keys = list(data["k"])
        if view is ReadView.READ:
            read_at, study_id = keys
            return [datetime.fromisoformat(read_at), int(study_id)]
        flag, score, received, study_id = keys
        return [int(flag), float(score), datetime.fromisoformat(received), int(study_id)]
    except InvalidCursorError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidCursorError("not a worklist cursor handed out by this server") from exc


def _like(text_value: str) -> str:
    escaped = text_value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _with_escalation(entry: WorklistEntry, mark: EscalationMark | None) -> WorklistEntry:
    if mark is None:
        return entry
    return replace(entry, escalated=mark.open, escalations=mark.count)


def worklist_page(engine: Engine, query: WorklistQuery) -> WorklistPage:
    """One page of the worklist (see ``WorklistQuery``); raises ``InvalidCursorError``."""
    limit = max(1, query.limit)
    base = _studies().subquery("s")
    if query.view is ReadView.READ:
        keys: tuple[ColumnElement[Any], ...] = (base.c.read_at, base.c.id)
        order: list[Any] = [base.c.read_at.desc(), base.c.id.desc()]
    else:
        keys = (base.c.k_flag, base.c.k_score, base.c.received_at, base.c.id)
        order = list(keys)
    stmt = select(base)
    if query.view is ReadView.UNREAD:
        stmt = stmt.where(base.c.read_state != ReadState.READ.value)
    elif query.view is ReadView.READ:
        stmt = stmt.where(base.c.read_state == ReadState.READ.value)
    # a study scored only in shadow (outside the validated population) has no triaging
    # score: it goes with the unscored studies, as a failed or not-eligible one does
    shadow_only = and_(base.c.status == InstanceStatus.DONE.value, base.c.score.is_(None))
    if query.statuses:
        wanted: ColumnElement[bool] = base.c.status.in_([s.value for s in query.statuses])
        if set(query.statuses) & set(UNSCORED_FINAL):
            wanted = or_(wanted, shadow_only)
        stmt = stmt.where(wanted)
    if query.exclude_statuses:
        unwanted: ColumnElement[bool] = base.c.status.in_([s.value for s in query.exclude_statuses])
        if set(query.exclude_statuses) & set(UNSCORED_FINAL):
            unwanted = or_(unwanted, shadow_only)
        stmt = stmt.where(~unwanted)
    search = (query.search or "").strip()
    if search:
        stmt = stmt.where(
            or_(
                base.c.accession_number.ilike(_like(search), escape="\\"),
                base.c.study_instance_uid == search,
                base.c.study_instance_uid.startswith(search, autoescape=True),
                base.c.read_by.ilike(_like(search), escape="\\"),
                base.c.claimed_by.ilike(_like(search), escape="\\"),
            )
        )
    if query.after:
        values = _decode_cursor(query.view, query.after)
        if query.view is ReadView.READ:
            stmt = stmt.where(tuple_(*keys) < tuple_(*map(literal, values)))
        else:
            stmt = stmt.where(
                tuple_(*keys)
                > tuple_(
                    literal(values[0], Integer),
                    literal(values[1], Float),
                    literal(values[2]),
                    literal(values[3]),
                )
            )
    stmt = stmt.order_by(*order).limit(limit + 1)
    with engine.begin() as conn:
        rows = conn.execute(stmt).all()
        results = study_results(conn, [r.id for r in rows[:limit]])
        marks = escalation_marks(conn, [r.id for r in rows[:limit]])
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = None
    if more and rows:
        last = rows[-1]
        if query.view is ReadView.READ:
            cursor = _encode_cursor(query.view, [last.read_at, last.id])
        else:
            cursor = _encode_cursor(
                query.view, [last.k_flag, last.k_score, last.received_at, last.id]
            )
    entries = [
        _with_escalation(replace(_entry(r), results=results.get(r.id)), marks.get(r.id))
        for r in rows
    ]
    return WorklistPage(entries, cursor)


def unread_counts(engine: Engine) -> UnreadCounts:
    """Studies not yet read, by priority class (the worklist page's summary line)."""
    base = _studies().subquery("s")
    pending = [s.value for s in PENDING_STATUSES]
    unscored = [s.value for s in UNSCORED_FINAL]
    klass = case(
        (base.c.flagged, literal("flagged")),
        (base.c.status.in_(unscored), literal("unscored")),
        # scored, but only in shadow (outside the validated population): no triaging score
        (
            and_(base.c.status == InstanceStatus.DONE.value, base.c.score.is_(None)),
            literal("unscored"),
        ),
        (base.c.status.in_(pending), literal("pending")),
        else_=literal("routine"),
    )
    stmt = (
        select(
            klass.label("klass"),
            func.count().label("n"),
            func.count().filter(base.c.read_state == ReadState.IN_PROGRESS.value).label("busy"),
        )
        .where(base.c.read_state != ReadState.READ.value)
        .group_by(klass)
    )
    with engine.begin() as conn:
        rows = conn.execute(stmt).all()
    counts = {r.klass: int(r.n) for r in rows}
    return UnreadCounts(
        flagged=counts.get("flagged", 0),
        unscored=counts.get("unscored", 0),
        pending=counts.get("pending", 0),
        routine=counts.get("routine", 0),
        in_progress=sum(int(r.busy) for r in rows),
    )


def _instances(conn: Connection, study_id: int) -> tuple[InstanceDetail, ...]:
    latest = (
        select(
            Prediction.probability,
            Prediction.threshold,
            Prediction.flagged,
            Prediction.model_version,
            Prediction.created_at,
            Prediction.heatmap_png.is_not(None).label("has_heatmap"),
            Prediction.triage,
            Prediction.score_lower,
            Prediction.score_upper,
        )
        .where(Prediction.instance_id == Instance.id, Prediction.model_role == ACTIVE_ROLE)
        .order_by(Prediction.created_at.desc())
        .limit(1)
        .lateral("p")
    )
    rows = conn.execute(
        select(
            Instance.sop_instance_uid,
            Instance.status,
            Instance.reason,
            Instance.view_position,
            Instance.received_at,
            Instance.storage_uri,
            latest.c.probability,
            latest.c.threshold,
            latest.c.flagged,
            latest.c.model_version,
            latest.c.created_at.label("scored_at"),
            latest.c.has_heatmap,
            Instance.population,
            Instance.population_reason,
            latest.c.triage,
            latest.c.score_lower,
            latest.c.score_upper,
        )
        .outerjoin(latest, true())
        .where(Instance.study_id == study_id)
        .order_by(latest.c.probability.desc().nulls_last(), Instance.received_at.asc(), Instance.id)
    ).all()
    return tuple(
        InstanceDetail(
            sop_instance_uid=r.sop_instance_uid,
            status=r.status,
            reason=r.reason,
            view_position=r.view_position,
            received_at=r.received_at,
            probability=r.probability,
            threshold=r.threshold,
            flagged=r.flagged,
            model_version=r.model_version,
            scored_at=r.scored_at,
            has_heatmap=bool(r.has_heatmap),
            population=r.population,
            population_reason=r.population_reason,
            triage=r.triage,
            storage_uri=r.storage_uri,
            score_lower=r.score_lower,
            score_upper=r.score_upper,
        )
        for r in rows
    )


def study_detail(engine: Engine, study_instance_uid: str) -> StudyDetail | None:
    """One study and its instances (highest probability first), or None if unknown."""
    with engine.begin() as conn:
        row = conn.execute(
            _studies().where(Study.study_instance_uid == study_instance_uid)
        ).one_or_none()
        if row is None:
            return None
        entry = replace(_entry(row), results=study_results(conn, [row.id]).get(row.id))
        entry = _with_escalation(entry, escalation_marks(conn, [row.id]).get(row.id))
        return StudyDetail(study=entry, instances=_instances(conn, row.id))
