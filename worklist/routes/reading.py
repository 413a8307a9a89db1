"""The radiologists' pages: the worklist (``GET /``), study pages with claim, answers and
release, the radiograph and heatmap PNGs, and the model card.

``GET /studies/{uid}`` shows the study: patient context, score against threshold,
radiograph and heatmap, answer form. It changes nothing but the audit log: the page claims
the study (``in_progress``) with ``POST /studies/{uid}/claim`` (its script does at once;
a button without script), so a cross-site ``<img>`` or link cannot create claims in a
radiologist's name. Each worklist view, study view and image fetch is audited. Saving an
answer opens the next unread study in worklist order (``next_unread``; the worklist when
none is left), and so does ``GET /next-unread``.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from markupsafe import Markup
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from cxr_common.errors import CxrTriageError
from cxr_db.accounts.tables import Role
from cxr_db.audit import store as audit
from cxr_db.audit.store import AuditEvent
from cxr_db.audit.tables import AuditAction
from cxr_db.errors import (
    InvalidAnswerError,
    StudyAlreadyReadError,
    StudyClaimedError,
    StudyNotFoundError,
)
from cxr_db.instances import reads as instance_reads
from cxr_db.instances.statuses import PENDING_STATUSES, InstanceStatus
from cxr_db.reading import store as reading
from cxr_db.reading.tables import ReadState
from cxr_db.worklist import reads
from cxr_db.worklist.reads import InvalidCursorError, ReadView, WorklistQuery
from cxr_imaging.limits import InputRefusedError
from worklist import pages
from worklist.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    HOME,
    AuthError,
    Principal,
    check_csrf,
    is_background,
    read_form,
)
from worklist.deps import Form, MaybePrincipal, Reader, State, WebState
from worklist.inputs import UID_RULE, parse_view, record_answer, valid_uid
from worklist.present import finding_display, study_href, utc_hhmm
from worklist.radiograph import FULL_MEDIA_TYPE, Withheld, patient_context
from worklist.responses import html, html_error, json_error, nav

logger = logging.getLogger(__name__)

router = APIRouter()

_UNSCORED = tuple(reads.UNSCORED_FINAL)


def _drift_banner(engine: Engine) -> Markup:
    """The drift warning for the worklist page; never stops the page (logged instead)."""
    from cxr_common.drift import PSI_WARN
    from cxr_db.drift import current_drift

    try:
        report = current_drift(engine)
    except SQLAlchemyError as exc:
        logger.warning("drift could not be measured (%s)", type(exc).__name__)
        return Markup("")
    alerts = report.windows[0].alerts(PSI_WARN) if report.windows else []
    return pages.drift_banner(alerts, PSI_WARN)


def _conflicts_banner(engine: Engine) -> Markup:
    """Unresolved patient conflicts for the worklist page; never stops the page."""
    from cxr_db.conflicts import store as conflicts
    from cxr_db.conflicts.tables import ConflictKind

    try:
        found = conflicts.open_conflicts(engine, kinds=(ConflictKind.PATIENT,), limit=20)
    except SQLAlchemyError as exc:
        logger.warning("patient conflicts could not be read (%s)", type(exc).__name__)
        return Markup("")
    return pages.conflicts_banner(found)


def next_unread(engine: Engine, skip: str | None = None) -> str | None:
    """The study a reader should open next: the first in worklist order (flagged first,
    then unscored, then by score; ``cxr_db.worklist.reads``) that is unread, not held by
    anyone, not ``skip``, and has its images scored or failed (a study still being scored
    has nothing to show yet, unless an image of it already flagged it). None when no
    study is left."""
    flagged_query = WorklistQuery(view=ReadView.UNREAD, limit=50)
    while True:  # the flagged studies lead the order: partly scored ones too
        page = reads.worklist_page(engine, flagged_query)
        for e in page.entries:
            if not e.flagged:
                break
            if e.read_state is ReadState.UNREAD and e.study_instance_uid != skip:
                return e.study_instance_uid
        else:
            if page.next_cursor is not None:
                flagged_query = replace(flagged_query, after=page.next_cursor)
                continue
        break
    query = WorklistQuery(view=ReadView.UNREAD, exclude_statuses=PENDING_STATUSES, limit=50)
    while True:
        page = reads.worklist_page(engine, query)
        for e in page.entries:
            if not e.flagged and e.read_state is ReadState.UNREAD and e.study_instance_uid != skip:
                return e.study_instance_uid
        if page.next_cursor is None:
            return None
        query = replace(query, after=page.next_cursor)


@router.get("/", response_class=HTMLResponse)
def worklist_page(
    request: Request,
    state: State,
    principal: MaybePrincipal,
    view: str | None = None,
    q: str = "",
    after: str | None = None,
    status: str | None = None,
    saved: str | None = None,
) -> Response:
    """``?view=unread|read|all&q=&after=`` (unread by default, priority first, paged); other
    roles are sent to their home page."""
    if principal is None:
        raise AuthError(401, "sign in")
    if principal.role is not Role.RADIOLOGIST:
        if principal.role not in HOME:  # a sender token reads nothing
            raise AuthError(403, f"the worklist is for radiologists; you are {principal.role}")
        return RedirectResponse(HOME[principal.role], status_code=303)
    engine, cfg = state.engine, state.config
    read_view = parse_view(view)
    if read_view is None:
        return html_error(400, "Unknown view", "view is unread, read or all.", principal)
    q = q.strip()[:100]
    only_unscored = status == "unscored"
    split = read_view is ReadView.UNREAD and not q and not only_unscored
    query = WorklistQuery(
        view=read_view,
        search=q or None,
        statuses=_UNSCORED if only_unscored else (),
        exclude_statuses=_UNSCORED if split else (),
        limit=cfg.page_size,
        after=after,
    )
    try:
        page = reads.worklist_page(engine, query)
    except InvalidCursorError as exc:
        return html_error(400, "Bad page link", str(exc), principal)
    unscored: list[reads.WorklistEntry] = []
    unscored_more = False
    if split and after is None:
        side = reads.worklist_page(
            engine,
            WorklistQuery(view=ReadView.UNREAD, statuses=_UNSCORED, limit=cfg.page_size),
        )
        unscored, unscored_more = side.entries, side.next_cursor is not None
    params = {"view": read_view.value, "q": q, "status": "unscored" if only_unscored else ""}
    base = {k: v for k, v in params.items() if v}
    audit.record(
        engine,
        audit.worklist_view(
            principal.actor(),
            "page",
            read_view.value,
            len(page.entries) + len(unscored),
            bool(q) or only_unscored,
            background=is_background(request),
        ),
    )
    notice = None
    if saved and valid_uid(saved):
        notice = f"Answer saved for study {saved}: it has left the unread list."
    w = pages.WorklistView(
        view=read_view,
        entries=page.entries,
        now=datetime.now(UTC),
        counts=reads.unread_counts(engine) if read_view is ReadView.UNREAD else None,
        unscored=unscored,
        unscored_more=unscored_more,
        search=q,
        only_unscored=only_unscored,
        next_href="/?" + urlencode({**base, "after": page.next_cursor})
        if page.next_cursor
        else None,
        first_href="/?" + urlencode(base) if after else None,
        notice=notice,
        banner=_conflicts_banner(engine) + _drift_banner(engine),
        refresh_s=cfg.refresh_s,
    )
    return html(pages.worklist_page(w, nav(principal)))


def _study_view(
    state: WebState,
    uid: str,
    principal: Principal,
    message: str | None = None,
    saved: str | None = None,
) -> pages.StudyView | None:
    engine = state.engine
    detail = reads.study_detail(engine, uid)
    if detail is None:
        return None
    patient = None
    problem = None
    instance_views: list[pages.InstanceView] = []
    for inst in detail.instances:
        burned_in = None
        if inst.storage_uri:
            try:
                ctx = patient_context(
                    inst.storage_uri,
                    state.engine,
                    inst.sop_instance_uid,
                    limits=state.config.limits,
                )
                burned_in = ctx.burned_in_annotation
                if patient is None:
                    patient = ctx
            except CxrTriageError as exc:
                problem = (
                    "Patient context unavailable: the stored file could not be read "
                    f"({type(exc).__name__})."
                )
        scored = inst.status is InstanceStatus.DONE
        withheld = None
        if scored and burned_in:
            withheld = "Radiograph withheld: text is burned into its pixels. View it in the PACS."
        elif scored and burned_in is None:
            withheld = "Radiograph unavailable: the stored file could not be read."
        instance_views.append(pages.InstanceView(inst, scored and burned_in is False, withheld))
    user = principal.user
    read = detail.study
    claimed_by_me = (
        read.read_state is ReadState.IN_PROGRESS
        and user is not None
        and read.claimed_by == user.username
    )
    can_answer = user is not None and (read.read_state is ReadState.UNREAD or claimed_by_me)
    # an unread study (or one's own claim, renewed) is claimed by the page's POST
    threshold = next((i.threshold for i in detail.instances if i.threshold is not None), None)
    return pages.StudyView(
        detail=detail,
        instances=instance_views,
        patient=patient,
        patient_problem=problem,
        answers=reading.answers_for(engine, uid),
        can_answer=can_answer,
        claimed_by_me=claimed_by_me,
        csrf_token=principal.csrf_token,
        threshold=threshold,
        finding=finding_display(state.config.resolved_model_dir),
        message=message,
        saved=saved,
    )


@router.get("/next-unread")
def open_next_unread(principal: Reader, state: State, skip: str | None = None) -> Response:
    """The next unread study (``next_unread``, passing over ``skip``), or the worklist
    when none is left."""
    uid = next_unread(state.engine, valid_uid(skip) if skip else None)
    return RedirectResponse(study_href(uid) if uid else "/", status_code=303)


@router.get("/studies/{study_instance_uid}", response_class=HTMLResponse)
def study_page(
    study_instance_uid: str, principal: Reader, state: State, saved: str | None = None
) -> Response:
    """``?saved=UID``: the answer on study UID was just saved and this study is the next."""
    uid = valid_uid(study_instance_uid)
    if uid is None:
        return html_error(
            400, "Malformed Study Instance UID", UID_RULE.capitalize() + ".", principal
        )
    engine = state.engine
    if reads.study_detail(engine, uid) is None:
        return html_error(
            404,
            "Study not found",
            f"No study with Study Instance UID {uid} is on record.",
            principal,
        )
    audit.record(engine, AuditEvent(AuditAction.STUDY_VIEW, principal.actor(), uid))
    view = _study_view(state, uid, principal, saved=valid_uid(saved) if saved else None)
    assert view is not None
    return html(pages.study_page(view, nav(principal)))


def _claim_message(result: reading.ClaimResult) -> str:
    read = result.read
    if result.claimed:
        return (
            f"In progress by you until {utc_hhmm(read.claim_expires_at)}. "
            "Others see that you are reading it."
        )
    if read.state is ReadState.READ:
        return f"Already read by {read.read_by or '-'}."
    return (
        f"In progress by {read.claimed_by or '-'} until {utc_hhmm(read.claim_expires_at)}: "
        "you can look, but only they can answer until then."
    )


@router.post("/studies/{study_instance_uid}/claim")
async def claim(
    study_instance_uid: str, request: Request, principal: Reader, state: State
) -> Response:
    """Claim the study (``in_progress`` for the claim timeout; one's own claim is renewed).
    The study page's script sends it with the ``X-CSRF-Token`` header and gets JSON
    (``claimed``, ``read_state``, ``claimed_by``, ``claim_expires_at``, ``message``); the
    page's button sends a form and is sent back to the study page. 409 when someone else
    holds it or it is read."""
    header = request.headers.get(CSRF_HEADER)
    form: dict[str, str] = {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if header is None and kind == "application/x-www-form-urlencoded":
        form = await read_form(request)
    check_csrf(principal, header if header is not None else form.get(CSRF_FIELD))
    uid = valid_uid(study_instance_uid)
    if uid is None:
        return json_error(400, f"malformed Study Instance UID: {UID_RULE}")
    if principal.user is None:
        return json_error(403, "an API token cannot claim a study: it answers directly")
    user = principal.user
    try:
        result = await run_in_threadpool(
            reading.claim_study,
            state.engine,
            uid,
            user,
            timeout=state.config.claim_timeout,
            client_addr=principal.client_addr,
        )
    except StudyNotFoundError:
        return json_error(404, f"no study with Study Instance UID {uid}")
    if header is None:
        return RedirectResponse(study_href(uid), status_code=303)
    read = result.read
    return JSONResponse(
        {
            "claimed": result.claimed,
            "read_state": read.state.value,
            "claimed_by": read.claimed_by,
            "claim_expires_at": read.claim_expires_at.isoformat()
            if read.claim_expires_at
            else None,
            "message": _claim_message(result),
        },
        status_code=200 if result.claimed else 409,
    )


@router.post("/studies/{study_instance_uid}/answer")
def answer_form(study_instance_uid: str, principal: Reader, form: Form, state: State) -> Response:
    check_csrf(principal, form.get(CSRF_FIELD))
    uid = valid_uid(study_instance_uid)
    if uid is None:
        return html_error(
            400, "Malformed Study Instance UID", UID_RULE.capitalize() + ".", principal
        )
    try:
        record_answer(state.engine, uid, principal, form)
    except StudyNotFoundError:
        return html_error(404, "Study not found", f"No study {uid}.", principal)
    except (StudyClaimedError, StudyAlreadyReadError, InvalidAnswerError) as exc:
        view = _study_view(state, uid, principal, f"Not saved: {exc}.")
        if view is None:
            return html_error(404, "Study not found", f"No study {uid}.", principal)
        code = 422 if isinstance(exc, InvalidAnswerError) else 409
        return html(pages.study_page(view, nav(principal)), code)
    following = next_unread(state.engine, skip=uid)
    target = study_href(following) if following else "/"
    return RedirectResponse(target + "?" + urlencode({"saved": uid}), status_code=303)


@router.post("/studies/{study_instance_uid}/release")
def release(study_instance_uid: str, principal: Reader, form: Form, state: State) -> Response:
    check_csrf(principal, form.get(CSRF_FIELD))
    uid = valid_uid(study_instance_uid)
    if uid is None or principal.user is None:
        return html_error(400, "Cannot release", "Not a study you hold.", principal)
    try:
        reading.release_study(state.engine, uid, principal.user, client_addr=principal.client_addr)
    except StudyNotFoundError:
        return html_error(404, "Study not found", f"No study {uid}.", principal)
    return RedirectResponse("/", status_code=303)


@router.get("/heatmaps/{sop_instance_uid}.png", response_class=Response)
def heatmap(sop_instance_uid: str, principal: Reader, state: State) -> Response:
    uid = valid_uid(sop_instance_uid)
    if uid is None:
        return json_error(400, f"malformed SOP Instance UID: {UID_RULE}")
    engine = state.engine
    png = instance_reads.heatmap_png(engine, uid)
    found = instance_reads.instance_file(engine, uid) if png is not None else None
    if png is None or found is None:
        return json_error(404, f"no heatmap for SOP Instance UID {uid}")
    audit.record(
        engine,
        AuditEvent(
            AuditAction.HEATMAP_FETCH,
            principal.actor(),
            uid,
            {"study_instance_uid": found.study_instance_uid},
        ),
    )
    return Response(png, media_type="image/png")


def _image_fetch(
    state: WebState, principal: Principal, uid: str, study_uid: str, full: bool = False
) -> None:
    detail: dict[str, str | bool] = {"study_instance_uid": study_uid}
    if full:
        detail["full_resolution"] = True
    audit.record(state.engine, AuditEvent(AuditAction.IMAGE_FETCH, principal.actor(), uid, detail))


@router.get("/images/{sop_instance_uid}.png", response_class=Response)
def radiograph(sop_instance_uid: str, principal: Reader, state: State) -> Response:
    """The radiograph as a grey PNG, longest side 512 px (the page's first paint)."""
    uid = valid_uid(sop_instance_uid)
    if uid is None:
        return json_error(400, f"malformed SOP Instance UID: {UID_RULE}")
    found = instance_reads.instance_file(state.engine, uid)
    if found is None or found.status is not InstanceStatus.DONE:
        return json_error(404, f"no scored radiograph for SOP Instance UID {uid}")
    try:
        png = state.radiographs.png(found.storage_uri)
    except Withheld as exc:
        return json_error(404, str(exc))
    except CxrTriageError as exc:
        logger.warning("radiograph %s could not be rendered (%s)", uid, type(exc).__name__)
        return json_error(404, f"the stored file of {uid} could not be rendered")
    _image_fetch(state, principal, uid, found.study_instance_uid)
    return Response(png, media_type="image/png")


@router.get("/images/{sop_instance_uid}.u16", response_class=Response)
def radiograph_full(
    sop_instance_uid: str, principal: Reader, state: State, request: Request
) -> Response:
    """The radiograph at full resolution and modality values for the viewer
    (``worklist.radiograph.encode_full``), gzip-encoded. The same rules as the PNG: only
    scored instances, withheld when text is burned in, the decode limits (a file over
    them is refused with 422 and the reason), audited as an image fetch."""
    uid = valid_uid(sop_instance_uid)
    if uid is None:
        return json_error(400, f"malformed SOP Instance UID: {UID_RULE}")
    found = instance_reads.instance_file(state.engine, uid)
    if found is None or found.status is not InstanceStatus.DONE:
        return json_error(404, f"no scored radiograph for SOP Instance UID {uid}")
    try:
        body = state.radiographs.full(found.storage_uri)
    except Withheld as exc:
        return json_error(404, str(exc))
    except InputRefusedError as exc:
        logger.warning("radiograph %s refused by the decode limits", uid)
        return json_error(422, f"not shown at full resolution: {exc.reason}")
    except CxrTriageError as exc:
        logger.warning("radiograph %s could not be rendered (%s)", uid, type(exc).__name__)
        return json_error(404, f"the stored file of {uid} could not be rendered")
    _image_fetch(state, principal, uid, found.study_instance_uid, full=True)
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        return Response(body, media_type=FULL_MEDIA_TYPE, headers={"Content-Encoding": "gzip"})
    return Response(gzip.decompress(body), media_type=FULL_MEDIA_TYPE)


@router.get("/model-card", response_class=HTMLResponse)
def model_card(principal: Reader, state: State) -> Response:
    path = state.config.resolved_model_dir / "MODEL_CARD.md"
    try:
        card = path.read_text(encoding="utf-8")
    except OSError:
        return html_error(404, "No model card", "The model has no MODEL_CARD.md.", principal)
    return html(pages.model_card_page(card, nav(principal)))
