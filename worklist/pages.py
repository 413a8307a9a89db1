"""Server-rendered HTML from the Jinja2 templates in ``worklist/templates``.

Autoescaping is on for every template: a value from the database or a DICOM header is
escaped wherever a template shows it, and nothing here marks text as safe except what a
template rendered. No inline script, no external asset: the scripts are
``/static/viewer.js`` (same origin) for the study page's image viewer and
``/static/reading.js`` for the reading tools (keyboard shortcuts, the worklist's own
refresh and announcements, answer drafts), and every page works without them.
``base.html`` carries the disclaimer (``cxr_common.clinical``) on each page
and, for a signed-in user, their name, role and a sign-out form with the CSRF token.

Each page has a view (a dataclass of what it shows) and a function that renders it; the
templates format values with ``worklist.present``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from cxr_common.clinical import DISCLAIMER
from cxr_db.accounts.store import TokenInfo, UserInfo
from cxr_db.accounts.tables import Role
from cxr_db.audit.store import AuditRecord, RefusalSummary
from cxr_db.audit.tables import AuditAction
from cxr_db.conflicts.store import OpenConflict
from cxr_db.escalations.store import OpenEscalation
from cxr_db.reading.stats import WindowStats
from cxr_db.reading.store import AnswerRecord
from cxr_db.reading.tables import Finding, ReadState
from cxr_db.results.states import SendStatus
from cxr_db.results.store import StudyResults
from cxr_db.worklist.reads import InstanceDetail, ReadView, StudyDetail, UnreadCounts, WorklistEntry
from worklist import present
from worklist.radiograph import PatientContext


@dataclass(frozen=True)
class Nav:
    """Who is signed in, for the page header (None on the sign-in page)."""

    name: str
    role: Role
    csrf_token: str | None  # None for a bearer token (no sign-out form)


#: The header's links for each role: (key, href, label); a page names its key as active.
NAV_LINKS: Mapping[Role, Sequence[tuple[str, str, str]]] = {
    Role.RADIOLOGIST: (("worklist", "/", "Worklist"), ("card", "/model-card", "Model card")),
    Role.ADMIN: (("audit", "/admin/audit", "Audit log"), ("users", "/admin/users", "Users")),
    Role.OPS: (("ops", "/ops", "Health"),),
    Role.SENDER: (),  # STOW-RS only: no page of its own
}


@cache
def _environment() -> Environment:
    """The templates' environment, built on first use (templates compile once, then are
    cached; no reload checks)."""
    env = Environment(
        loader=PackageLoader("worklist", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.globals.update(
        disclaimer=DISCLAIMER,
        nav_links=NAV_LINKS,
        nav=None,
        active="",
        script=False,
        # enums the templates compare with
        AuditAction=AuditAction,
        Finding=Finding,
        ReadState=ReadState,
        ReadView=ReadView,
        SendStatus=SendStatus,
        # formatting (worklist.present)
        FINDING_LABELS=present.FINDING_LABELS,
        RESULT_STATE_LABELS=present.RESULT_STATE_LABELS,
        SHADOW_NOTE=present.SHADOW_NOTE,
        account_status=present.account_status,
        delivery_text=present.delivery_text,
        age_text=present.age_text,
        dicom_status=present.dicom_status,
        duration_text=present.duration_text,
        escalation_title=present.escalation_title,
        population_text=present.population_text,
        read_label=present.read_label,
        score_text=present.score_text,
        status_kind=present.status_kind,
        status_label=present.status_label,
        status_note=present.status_note,
        study_href=present.study_href,
        study_label=present.study_label,
        uid_path=present.uid_path,
        utc_hhmm=present.utc_hhmm,
        utc_time=present.utc_time,
        waiting_text=present.waiting_text,
        worklist_href=present.worklist_href,
    )
    return env


def render(template: str, nav: Nav | None = None, **context: Any) -> str:
    """``template`` rendered with ``context`` (and the header for ``nav``)."""
    return _environment().get_template(template).render(nav=nav, **context)


def _macro(name: str, *args: Any) -> Markup:
    """One macro of ``macros.html``, rendered (escaped like any template output)."""
    macro = getattr(_environment().get_template("macros.html").module, name)
    return Markup(macro(*args))


# ---------------------------------------------------------------------------- sign-in


def sign_in_page(csrf_token: str, next_path: str, message: str | None = None) -> str:
    return render("sign_in.html", csrf_token=csrf_token, next_path=next_path, message=message)


def password_page(
    csrf_token: str, nav: Nav | None = None, message: str | None = None, ok: bool = False
) -> str:
    """The signed-in user's password change form (``/account/password``)."""
    from cxr_common.passwords import MIN_PASSWORD_LENGTH

    return render(
        "password.html",
        nav,
        csrf_token=csrf_token,
        message=message,
        ok=ok,
        min_length=MIN_PASSWORD_LENGTH,
    )


# ---------------------------------------------------------------------------- worklist


@dataclass(frozen=True)
class WorklistView:
    """Everything the worklist page shows."""

    view: ReadView
    entries: Sequence[WorklistEntry]
    now: datetime
    counts: UnreadCounts | None = None
    unscored: Sequence[WorklistEntry] = ()
    """Unread studies the model could not score (first unread page only)."""
    unscored_more: bool = False
    search: str = ""
    only_unscored: bool = False
    next_href: str | None = None
    first_href: str | None = None
    notice: str | None = None
    rank_offset: int = 0
    tabs: dict[str, str] = field(default_factory=dict)
    banner: Markup = Markup("")
    """A drift warning (``drift_banner``), shown above the list."""
    refresh_s: float = 30.0
    """The page fetches itself this often (``/static/reading.js``), not as activity."""


def drift_banner(alerts: Sequence[str], threshold: float) -> Markup:
    """A warning above the worklist when the last 24 hours' inputs or scores drifted from the
    model's calibration sample (``cxr_db.drift``); empty when nothing crossed ``threshold``."""
    return _macro("drift_banner", alerts, threshold)


def conflicts_banner(conflicts: Sequence[OpenConflict]) -> Markup:
    """Unresolved patient conflicts above the worklist (``cxr_db.conflicts``): instances
    refused because their study is stored for another patient; empty when none."""
    return _macro("conflicts_banner", conflicts)


def worklist_page(w: WorklistView, nav: Nav | None = None) -> str:
    return render("worklist.html", nav, w=w)


# ---------------------------------------------------------------------------- study


@dataclass(frozen=True)
class InstanceView:
    detail: InstanceDetail
    radiograph: bool  # a plain radiograph can be shown (scored, no burned-in text)
    withheld: str | None = None  # why not, when it cannot


@dataclass(frozen=True)
class StudyView:
    detail: StudyDetail
    instances: Sequence[InstanceView]
    patient: PatientContext | None
    patient_problem: str | None
    answers: Sequence[AnswerRecord]
    can_answer: bool
    claimed_by_me: bool
    csrf_token: str | None
    threshold: float | None
    message: str | None = None
    finding: str | None = None  # what the score is of (model.json), e.g. "Pneumonia"
    saved: str | None = None  # the study whose answer was just saved (this is the next)


def study_page(s: StudyView, nav: Nav | None = None) -> str:
    return render("study.html", nav, s=s)


def results_block(results: StudyResults | None) -> Markup:
    """The study page's "Results in PACS" block: state, version, newest attempt per
    destination (Secondary Capture + SR statuses); empty without results."""
    return _macro("results_block", results)


# ---------------------------------------------------------------------------- admin


@dataclass(frozen=True)
class AuditView:
    entries: Sequence[AuditRecord]
    filters: dict[str, str]
    next_href: str | None
    total: int
    refusals: Sequence[RefusalSummary] = ()  # the last 24 hours' refused requests


def audit_page(a: AuditView, nav: Nav | None = None) -> str:
    return render("audit.html", nav, a=a)


def users_page(
    users: Sequence[UserInfo], tokens: Sequence[TokenInfo], nav: Nav | None = None
) -> str:
    return render("users.html", nav, users=users, tokens=tokens)


# ---------------------------------------------------------------------------- other


def model_card_page(card: str, nav: Nav | None = None) -> str:
    return render("model_card.html", nav, card=card)


def ops_page(
    health: Mapping[str, object],
    nav: Nav | None = None,
    escalations: Sequence[OpenEscalation] | None = (),
    read_stats: Sequence[WindowStats] | None = None,
    read_header: Sequence[str] = (),
    conflicts: Sequence[OpenConflict] | None = (),
) -> str:
    """Health checks, time to read, the open escalations, then the unresolved conflicts
    (None: could not be read)."""
    return render(
        "ops.html",
        nav,
        health=health,
        escalations=escalations,
        read_stats=read_stats,
        read_header=read_header,
        conflicts=conflicts,
    )


def error_page(title: str, message: str, nav: Nav | None = None) -> str:
    return render("error.html", nav, heading=title, message=message)
