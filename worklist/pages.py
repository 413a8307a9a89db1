"""Server-rendered HTML: every value escaped, no inline script, no external asset.

The only script is ``/static/viewer.js`` (same origin) for the study page's image viewer;
every page works without it. Each page carries the disclaimer; pages for a signed-in
user carry their name, role and a sign-out form with the CSRF token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote, urlencode

from cxr_common.clinical import DISCLAIMER
from cxr_db.accounts import TokenInfo, UserInfo
from cxr_db.audit import AuditRecord
from cxr_db.reading import AnswerRecord
from cxr_db.reads import (
    InstanceDetail,
    ReadView,
    StudyDetail,
    StudyResults,
    UnreadCounts,
    WorklistEntry,
)
from cxr_db.result_states import ResultState, SendStatus
from cxr_db.schema_reading import AuditAction, Finding, ReadState, Role
from cxr_db.statuses import PENDING_STATUSES, REASON_STATUSES, InstanceStatus, StatusReason
from worklist.present import (
    FINDING_LABELS,
    SHADOW_NOTE,
    badge_note,
    population_text,
    read_label,
    score_text,
    status_label,
)
from worklist.radiograph import PatientContext

_CSS = """
:root { --ink:#1d2733; --muted:#5b6b7c; --line:#dde3ea; --bg:#f4f6f9; --head:#17324d;
  --pos:#b3261e; --pos-bg:#fdecea; --warn-bg:#fff4d6; --warn-line:#e0b341; --link:#0b57a4; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",
  sans-serif; color:var(--ink); background:var(--bg); }
header { background:var(--head); color:#fff; padding:10px 24px; display:flex;
  align-items:center; gap:20px; flex-wrap:wrap; }
header h1 { font-size:18px; margin:0; font-weight:600; letter-spacing:.2px; }
header a { color:#fff; text-decoration:none; }
header nav a { color:#c5d3e0; margin-right:14px; font-weight:600; }
header nav a.active { color:#fff; border-bottom:2px solid #fff; padding-bottom:2px; }
header .who { margin-left:auto; color:#c5d3e0; font-size:13px; display:flex; gap:10px;
  align-items:center; }
header .who form { margin:0; }
header .who button { background:transparent; color:#fff; border:1px solid #6d87a1;
  border-radius:4px; padding:3px 10px; cursor:pointer; font:inherit; }
.disclaimer { background:var(--warn-bg); border-bottom:1px solid var(--warn-line);
  padding:8px 24px; font-weight:600; color:#5c4200; }
main { padding:16px 24px 32px; }
.bar { display:flex; align-items:center; gap:16px; flex-wrap:wrap; margin-bottom:12px; }
.tabs a { display:inline-block; padding:6px 14px; border:1px solid var(--line);
  background:#fff; color:var(--link); text-decoration:none; font-weight:600;
  margin-right:-1px; }
.tabs a.active { background:var(--head); color:#fff; border-color:var(--head); }
.bar form { margin-left:auto; display:flex; gap:6px; }
.bar input[type=search] { width:300px; }
input[type=search], input[type=text], input[type=password], select, textarea {
  font:inherit; padding:5px 8px; border:1px solid #b9c4cf; border-radius:4px;
  background:#fff; }
button, .button { font:inherit; padding:6px 14px; border-radius:4px; border:1px solid #0b57a4;
  background:#0b57a4; color:#fff; cursor:pointer; text-decoration:none; }
button.secondary { background:#fff; color:#0b57a4; }
.summary { color:var(--muted); margin:0 0 10px; }
.summary strong { color:var(--ink); }
.summary a { color:var(--link); }
.notice { background:#e5f4ea; border:1px solid #bfe1c9; color:#1e6b3a; padding:8px 12px;
  margin-bottom:12px; font-weight:600; }
.notice.warn { background:var(--warn-bg); border-color:var(--warn-line); color:#5c4200; }
.notice.error { background:var(--pos-bg); border-color:#f0b7b2; color:var(--pos); }
table { width:100%; border-collapse:collapse; background:#fff; border:1px solid var(--line); }
table.worklist { table-layout:fixed; }
table.worklist col.rank { width:44px; } table.worklist col.flag { width:150px; }
table.worklist col.study { width:17%; } table.worklist col.score { width:120px; }
table.worklist col.read { width:190px; } table.worklist col.model { width:120px; }
table.worklist col.time { width:168px; }
table.worklist td { overflow-wrap:anywhere; }
th, td { padding:8px 10px; border-bottom:1px solid var(--line); text-align:left;
  vertical-align:top; }
th { background:#eef2f6; font-size:12px; text-transform:uppercase; letter-spacing:.4px;
  color:var(--muted); font-weight:600; white-space:nowrap; }
td.model { white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.time { white-space:nowrap; font-variant-numeric:tabular-nums; color:var(--muted); }
tr.flagged td { background:var(--pos-bg); }
tr.flagged td:first-child { box-shadow:inset 4px 0 0 var(--pos); }
tr.flagged td.score { color:var(--pos); font-weight:700; }
tr:hover td { background:#eaf1f8; }
tr.flagged:hover td { background:#fbdcd8; }
a.study { color:var(--link); font-weight:600; text-decoration:none; }
a.study:hover { text-decoration:underline; }
.uid { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px;
  color:var(--muted); word-break:break-all; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
  font-weight:700; white-space:nowrap; }
.badge.pos { background:var(--pos); color:#fff; }
.badge.failed { background:#fbe3e1; color:var(--pos); border:1px solid #f0b7b2; }
.badge.not_eligible { background:#eceff2; color:#4a5561; border:1px solid #cfd6dd; }
.badge.pending { background:#e4eefa; color:#1f5391; border:1px solid #bcd2ee; }
.badge.done { background:#e5f4ea; color:#1e6b3a; border:1px solid #bfe1c9; }
.badge.unread { background:#fff; color:#4a5561; border:1px solid #cfd6dd; }
.badge.in_progress { background:#fff4d6; color:#5c4200; border:1px solid var(--warn-line); }
.badge.read { background:#e5f4ea; color:#1e6b3a; border:1px solid #bfe1c9; }
.reason { display:block; margin-top:3px; font-size:12px; }
.reason.failed { color:var(--pos); }
.reason.not_eligible { color:#5f6b77; }
.empty { padding:32px; text-align:center; color:var(--muted); background:#fff;
  border:1px solid var(--line); }
.pager { margin:10px 0 0; display:flex; gap:12px; }
.pager a { color:var(--link); font-weight:600; }
dl.facts { display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; margin:0;
  background:#fff; border:1px solid var(--line); padding:12px 16px; }
dl.facts dt { color:var(--muted); }
dl.facts dd { margin:0; }
.panel dl.facts { border:0; padding:0; }
.reading { display:grid; grid-template-columns:minmax(0,1fr) 400px; gap:16px;
  align-items:start; }
.reading > aside { display:flex; flex-direction:column; gap:16px; }
@media (max-width:1100px) { .reading { grid-template-columns:minmax(0,1fr); } }
.panel { background:#fff; border:1px solid var(--line); padding:12px 16px; }
.panel h2 { margin:0 0 8px; }
.panel.patient { border-left:4px solid var(--head); }
.meter { position:relative; height:10px; background:#e7ecf1; border-radius:5px;
  margin:6px 0 2px; max-width:260px; }
.meter .fill { position:absolute; left:0; top:0; bottom:0; border-radius:5px;
  background:#5d86b3; }
.meter.pos .fill { background:var(--pos); }
.meter .mark { position:absolute; top:-4px; bottom:-4px; width:2px; background:var(--ink); }
.images { display:flex; flex-direction:column; gap:16px; }
.images h2 { margin:0; }
.image { background:#fff; border:1px solid var(--line); padding:12px; }
.image.flagged { border-color:var(--pos); box-shadow:inset 0 4px 0 var(--pos); }
.image dl.facts { border:0; padding:8px 0 0; }
.controls { display:flex; gap:18px; align-items:center; flex-wrap:wrap; margin-bottom:10px;
  padding:6px 10px; background:#eef2f6; border:1px solid var(--line); }
.controls[hidden] { display:none; }
.controls label { display:flex; gap:6px; align-items:center; cursor:pointer; }
.stage { display:flex; gap:12px; flex-wrap:wrap; }
.stage figure { margin:0; width:calc(50% - 6px); max-width:512px; }
.stage img { display:block; width:100%; height:auto; background:#000; }
.stage figcaption { color:var(--muted); font-size:12px; padding-top:4px; }
.viewer.overlay .stage { display:grid; max-width:640px; }
.viewer.overlay .stage figure { grid-area:1 / 1; width:100%; max-width:640px; }
.viewer.overlay .stage figcaption { display:none; }
.viewer.heat-hidden .heat { visibility:hidden; }
.noimg { margin:0 0 4px; padding:24px 8px; text-align:center; color:var(--muted);
  background:#eef2f6; border:1px dashed #c9d2dc; max-width:512px; }
form.answer fieldset { border:0; padding:0; margin:0 0 10px; display:flex; gap:8px;
  flex-wrap:wrap; }
form.answer label.finding { display:flex; gap:6px; align-items:center; padding:6px 12px;
  border:1px solid var(--line); border-radius:4px; cursor:pointer; background:#f8fafc; }
form.answer textarea { width:100%; min-height:70px; margin:4px 0 10px; }
.actions { display:flex; gap:10px; align-items:center; flex-wrap:wrap; }
.actions form { margin:0; }
h2 { font-size:16px; margin:20px 0 8px; }
.back { display:inline-block; margin-bottom:12px; color:var(--link); text-decoration:none; }
.signin { max-width:380px; margin:48px auto; background:#fff; border:1px solid var(--line);
  padding:24px 28px; }
.signin h2 { margin-top:0; }
.signin label { display:block; margin:12px 0 4px; color:var(--muted); }
.signin input { width:100%; }
.signin button { margin-top:18px; width:100%; }
pre.card { background:#fff; border:1px solid var(--line); padding:16px; white-space:pre-wrap;
  font:13px/1.5 ui-monospace,"DejaVu Sans Mono",monospace; }
form.filters { display:flex; gap:8px; flex-wrap:wrap; align-items:end; margin-bottom:12px; }
form.filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); }
td.detail { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px; }
.shadow { color:#8a949e; font-style:italic; }
.population { display:block; margin-top:3px; font-size:12px; color:#5f6b77; }
.population.outside { color:#7a4b00; }
.drift { background:var(--warn-bg); border:1px solid var(--warn-line); padding:8px 12px;
  margin:0 0 12px; color:#5c4200; }
"""


@dataclass(frozen=True)
class Nav:
    """Who is signed in, for the page header (None on the sign-in page)."""

    name: str
    role: Role
    csrf_token: str | None  # None for a bearer token (no sign-out form)


def _time(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _hhmm(value: datetime | None) -> str:
    return "–" if value is None else value.astimezone(UTC).strftime("%H:%M UTC")


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _status_html(status: InstanceStatus, reasons: Sequence[StatusReason]) -> str:
    kind = "pending" if status in PENDING_STATUSES else status.value
    out = f'<span class="badge {kind}">{escape(status_label(status))}</span>'
    note = badge_note(status, reasons) if status in REASON_STATUSES else None
    if note:
        out += f'<span class="reason {kind}">{escape(note)}</span>'
    return out


def population_html(population: str | None, reason: str | None) -> str:
    """The population note under a status (nothing for an in-scope study: no noise)."""
    if population is None or population == "in_scope":
        return ""
    text = population_text(population, reason) or ""
    return f'<span class="population {escape(population)}">{escape(text)}</span>'


def _score_html(
    score: float | None,
    shadow: float | None,
    lower: float | None = None,
    upper: float | None = None,
) -> str:
    """The triaging score, or a greyed shadow score that does not triage; with its
    uncertainty when it has an interval ("0.310 ± 0.143")."""
    if score is None and shadow is not None:
        text = escape(score_text(shadow, lower, upper))
        return f'<span class="shadow" title="{escape(SHADOW_NOTE)}">({text})</span>'
    return "–" if score is None else escape(score_text(score, lower, upper))


def drift_banner(alerts: Sequence[str], threshold: float) -> str:
    """A warning above the worklist when the last 24 hours' inputs or scores drifted from the
    model's calibration sample (``cxr_db.drift``); empty when nothing crossed ``threshold``."""
    if not alerts:
        return ""
    what = ", ".join(alerts)
    return (
        f'<div class="drift" role="alert">Drift warning: the {escape(what)} distribution of '
        f"the last 24 hours differs from the model's calibration sample (PSI ≥ {threshold:g}). "
        "Scores may be less reliable than validated: see <code>cxr-triage drift</code>.</div>"
    )


def _read_html(e: WorklistEntry) -> str:
    out = f'<span class="badge {e.read_state.value}">{escape(read_label(e))}</span>'
    if e.read_state is ReadState.IN_PROGRESS:
        out += f'<span class="reason">until {escape(_hhmm(e.claim_expires_at))}</span>'
    elif e.read_state is ReadState.READ:
        out += f'<span class="reason">{escape(_time(e.read_at))} UTC</span>'
    return out


def study_href(study_instance_uid: str) -> str:
    return "/studies/" + quote(study_instance_uid, safe=".")


def _nav_links(nav: Nav, active: str) -> str:
    links: list[tuple[str, str, str]] = []
    if nav.role is Role.RADIOLOGIST:
        links = [("worklist", "/", "Worklist"), ("card", "/model-card", "Model card")]
    elif nav.role is Role.ADMIN:
        links = [("audit", "/admin/audit", "Audit log"), ("users", "/admin/users", "Users")]
    elif nav.role is Role.OPS:
        links = [("ops", "/ops", "Health")]
    return "".join(
        f'<a href="{href}"{" class=active" if key == active else ""}>{escape(label)}</a>'
        for key, href, label in links
    )


def _layout(
    title: str, body: str, nav: Nav | None = None, *, active: str = "", script: bool = False
) -> str:
    who = ""
    links = ""
    if nav is not None:
        links = f"<nav>{_nav_links(nav, active)}</nav>"
        sign_out = ""
        if nav.csrf_token is not None:
            sign_out = (
                '<form method="post" action="/sign-out">'
                f'<input type="hidden" name="csrf_token" value="{escape(nav.csrf_token)}">'
                '<button type="submit">Sign out</button></form>'
            )
        who = (
            f'<span class="who"><span>{escape(nav.name)} · {escape(nav.role.value)}</span>'
            f"{sign_out}</span>"
        )
    script_tag = '<script src="/static/viewer.js" defer></script>' if script else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style>{script_tag}</head><body>"
        '<header><h1><a href="/">CXR Triage · Reading worklist</a></h1>'
        f"{links}{who}</header>"
        f'<div class="disclaimer" role="note">{escape(DISCLAIMER)}</div>'
        f"<main>{body}</main></body></html>\n"
    )


def _study_label(accession: str | None, study_instance_uid: str) -> str:
    if accession:
        return escape(accession)
    return escape("…" + study_instance_uid[-16:])


# ---------------------------------------------------------------------------- sign-in


def sign_in_page(csrf_token: str, next_path: str, message: str | None = None) -> str:
    notice = f'<div class="notice error" role="alert">{escape(message)}</div>' if message else ""
    body = (
        '<div class="signin"><h2>Sign in</h2>'
        f"{notice}"
        '<form method="post" action="/sign-in" autocomplete="on">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf_token)}">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<label for="username">User name</label>'
        '<input id="username" name="username" type="text" autocomplete="username" required '
        'autofocus maxlength="64">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" '
        'autocomplete="current-password" required maxlength="1024">'
        '<button type="submit">Sign in</button></form></div>'
    )
    return _layout("Sign in · CXR Triage", body)


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
    banner: str = ""
    """A drift warning (``drift_banner``), shown above the list."""


def _rows(entries: Sequence[WorklistEntry], start: int = 1) -> str:
    rows = []
    for rank, e in enumerate(entries, start):
        flag = '<span class="badge pos">LIKELY POSITIVE</span>' if e.flagged else ""
        rows.append(
            f'<tr class="{"flagged" if e.flagged else "routine"}"'
            f' data-study="{escape(e.study_instance_uid)}" data-read="{e.read_state.value}">'
            f'<td class="num">{rank}</td><td>{flag}</td>'
            f'<td><a class="study" href="{escape(study_href(e.study_instance_uid))}">'
            f"{_study_label(e.accession_number, e.study_instance_uid)}</a>"
            f'<br><span class="uid">{e.instances} image{"s" if e.instances != 1 else ""}</span>'
            f"</td><td>{_status_html(e.status, e.reasons)}"
            f"{population_html(e.population, e.population_reason)}</td>"
            '<td class="num score">'
            f"{_score_html(e.score, e.shadow_score, e.score_lower, e.score_upper)}</td>"
            f"<td>{_read_html(e)}</td>"
            f'<td class="uid model">{escape(e.model_version or "–")}</td>'
            f'<td class="time">{_time(e.received_at)}</td>'
            f'<td class="time">{_time(e.scored_at)}</td></tr>'
        )
    return (
        '<table class="worklist"><colgroup><col class="rank"><col class="flag">'
        '<col class="study"><col><col class="score"><col class="read"><col class="model">'
        '<col class="time"><col class="time"></colgroup>'
        '<thead><tr><th class="num">#</th><th>Priority</th><th>Accession / study</th>'
        '<th>Status</th><th class="num">Score</th><th>Read</th><th>Model</th>'
        "<th>Received (UTC)</th><th>Scored (UTC)</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _worklist_href(view: ReadView, **params: str) -> str:
    query = {"view": view.value, **{k: v for k, v in params.items() if v}}
    return "/?" + urlencode(query)


def worklist_page(w: WorklistView, nav: Nav | None = None) -> str:
    tabs = "".join(
        f'<a href="{escape(_worklist_href(v))}"{" class=active" if v is w.view else ""}>'
        f"{escape(label)}</a>"
        for v, label in (
            (ReadView.UNREAD, "Unread"),
            (ReadView.READ, "Read"),
            (ReadView.ALL, "All"),
        )
    )
    search = (
        '<form method="get" action="/" role="search">'
        f'<input type="hidden" name="view" value="{w.view.value}">'
        f'<input type="search" name="q" value="{escape(w.search)}" '
        'placeholder="Accession, Study UID or reader" aria-label="Search">'
        '<button type="submit" class="secondary">Search</button></form>'
    )
    parts = [f'<div class="bar"><div class="tabs">{tabs}</div>{search}</div>', w.banner]
    if w.notice:
        parts.append(f'<div class="notice" role="status">{escape(w.notice)}</div>')
    if w.counts is not None:
        c = w.counts
        unscored = f"<strong>{c.unscored}</strong> not scored by the model"
        if c.unscored and w.unscored:
            unscored = f'<a href="#not-scored">{unscored}</a>'
        parts.append(
            f'<p class="summary"><strong>{c.total}</strong> unread: '
            f"<strong>{c.flagged}</strong> likely positive · {unscored} · "
            f"<strong>{c.pending}</strong> being scored · <strong>{c.routine}</strong> "
            f"routine · <strong>{c.in_progress}</strong> in progress. "
            f"Updated {_time(w.now)} UTC · "
            f'<a href="{escape(_worklist_href(w.view, q=w.search))}">refresh</a></p>'
        )
    if w.entries:
        parts.append(_rows(w.entries, w.rank_offset + 1))
    else:
        what = {
            ReadView.UNREAD: "Nothing left to read.",
            ReadView.READ: "No read studies match.",
            ReadView.ALL: "No studies on the worklist yet.",
        }[w.view]
        if w.only_unscored:
            what = "No unread study is waiting without a score."
        parts.append(f'<div class="empty">{escape(what)}</div>')
    pager = []
    if w.first_href:
        pager.append(f'<a href="{escape(w.first_href)}">⟵ First page</a>')
    if w.next_href:
        pager.append(f'<a href="{escape(w.next_href)}" rel="next">Next page ⟶</a>')
    if pager:
        parts.append(f'<div class="pager">{"".join(pager)}</div>')
    if w.unscored:
        more = ""
        if w.unscored_more:
            href = _worklist_href(ReadView.UNREAD, status="unscored")
            more = f'<div class="pager"><a href="{escape(href)}">All not-scored studies ⟶</a></div>'
        parts.append(
            '<h2 id="not-scored">Not scored by the model: read these without triage</h2>'
            '<p class="summary">Failed, not eligible, or outside the population the model was '
            "validated for (its score greyed in brackets, for information): the model gives no "
            "priority for them, "
            "so they are listed on every first page, however long the queue above.</p>"
            + _rows(w.unscored)
            + more
        )
    title = {
        ReadView.UNREAD: "Unread",
        ReadView.READ: "Read",
        ReadView.ALL: "All studies",
    }[w.view]
    return _layout(f"{title} · Worklist · CXR Triage", "".join(parts), nav, active="worklist")


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


def _meter(score: float | None, threshold: float | None, flagged: bool) -> str:
    if score is None:
        return ""
    mark = "" if threshold is None else f'<span class="mark" style="left:{threshold * 100:.1f}%">'
    if mark:
        mark += "</span>"
    cls = "meter pos" if flagged else "meter"
    return (
        f'<div class="{cls}" role="img" aria-label="score against threshold">'
        f'<span class="fill" style="width:{score * 100:.1f}%"></span>{mark}</div>'
    )


def _patient_html(s: StudyView) -> str:
    if s.patient is None:
        return (
            '<section class="panel patient"><h2>Patient</h2>'
            f'<p class="summary">{escape(s.patient_problem or "Patient context unavailable.")}'
            "</p></section>"
        )
    p = s.patient
    rows = (
        ("Name", p.name),
        ("Patient ID", p.patient_id),
        ("Age", p.age),
        ("Sex", p.sex),
        ("Study date", p.study_date),
        ("Body part", p.body_part),
        ("View", p.view),
    )
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v or '–')}</dd>" for k, v in rows)
    return (
        '<section class="panel patient"><h2>Patient</h2>'
        f'<dl class="facts" data-patient>{facts}</dl></section>'
    )


def _viewer(i: InstanceView, n: int) -> str:
    d = i.detail
    sop = quote(d.sop_instance_uid, safe=".")
    heat = ""
    if d.has_heatmap:
        heat = (
            f'<figure class="heat"><img src="/heatmaps/{escape(sop)}.png" '
            f'alt="Grad-CAM heatmap of image {escape(d.sop_instance_uid)}">'
            "<figcaption>Grad-CAM heatmap (where the model looked)</figcaption></figure>"
        )
    plain = ""
    if i.radiograph:
        plain = (
            f'<figure class="plain"><img src="/images/{escape(sop)}.png" '
            f'alt="Radiograph {escape(d.sop_instance_uid)}">'
            "<figcaption>Radiograph</figcaption></figure>"
        )
    elif i.withheld:
        plain = f'<p class="noimg">{escape(i.withheld)}</p>'
    if not heat and not plain:
        note = "No image: this instance was not scored."
        if d.scored_at is not None:
            note = "No heatmap was stored for this image."
        return f'<p class="noimg">{escape(note)}</p>'
    controls = ""
    if heat and i.radiograph:
        controls = (
            '<div class="controls" hidden>'
            f'<label><input type="radio" class="mode" name="mode-{n}" value="side" checked> '
            "Side by side</label>"
            f'<label><input type="radio" class="mode" name="mode-{n}" value="overlay"> '
            "Overlay</label>"
            '<label><input type="checkbox" class="show-heat" checked> Heatmap</label>'
            '<label>Opacity <input type="range" class="opacity" min="0" max="100" value="60">'
            '<span class="opacity-value">60%</span></label></div>'
        )
    return f'<div class="viewer side">{controls}<div class="stage">{plain}{heat}</div></div>'


def _instance_score_html(d: InstanceDetail) -> str:
    """The probability with its meter, or greyed without one when it does not triage."""
    note = population_html(d.population, d.population_reason)
    if d.triage is False and d.probability is not None:
        return _score_html(None, d.probability, d.score_lower, d.score_upper) + note
    score = _score_html(d.probability, None, d.score_lower, d.score_upper)
    return f"{score} {_meter(d.probability, d.threshold, bool(d.flagged))}{note}"


def _instance_card(i: InstanceView, n: int) -> str:
    d = i.detail
    if d.flagged:
        flag = '<span class="badge pos">LIKELY POSITIVE</span>'
    elif d.triage is False:
        flag = "not triaged: shadow score (outside the validated population)"
    elif d.flagged is None:
        flag = "–"
    else:
        flag = "below threshold"
    facts = (
        f'<dt>SOP Instance UID</dt><dd class="uid">{escape(d.sop_instance_uid)}</dd>'
        f"<dt>Status</dt><dd>{_status_html(d.status, d.reasons)}</dd>"
        f"<dt>View</dt><dd>{escape(d.view_position or '–')}</dd>"
        f"<dt>Probability</dt><dd>{_instance_score_html(d)}</dd>"
        f"<dt>Threshold</dt><dd>{_score(d.threshold)}</dd>"
        f"<dt>Flag</dt><dd>{flag}</dd>"
        f'<dt>Model version</dt><dd class="uid">{escape(d.model_version or "–")}</dd>'
        f"<dt>Received (UTC)</dt><dd>{_time(d.received_at)}</dd>"
        f"<dt>Scored (UTC)</dt><dd>{_time(d.scored_at)}</dd>"
    )
    cls = "image flagged" if d.flagged else "image"
    return f'<section class="{cls}">{_viewer(i, n)}<dl class="facts">{facts}</dl></section>'


def _read_banner(s: StudyView) -> str:
    e = s.detail.study
    if e.read_state is ReadState.READ:
        finding = FINDING_LABELS[e.finding] if e.finding else "–"
        return (
            f'<div class="notice" role="status">Read by {escape(e.read_by or "–")} at '
            f"{escape(_time(e.read_at))} UTC: {escape(finding)}.</div>"
        )
    if e.read_state is ReadState.IN_PROGRESS and not s.claimed_by_me:
        return (
            f'<div class="notice warn" role="status">In progress by {escape(e.claimed_by or "–")}'
            f" until {escape(_hhmm(e.claim_expires_at))}: you can look, but only they can "
            "answer until then.</div>"
        )
    if s.claimed_by_me:
        return (
            '<div class="notice" role="status">In progress by you until '
            f"{escape(_hhmm(e.claim_expires_at))}. Others see that you are reading it.</div>"
        )
    return ""


def _answer_form(s: StudyView) -> str:
    if not s.can_answer or s.csrf_token is None:
        return ""
    e = s.detail.study
    uid = quote(e.study_instance_uid, safe=".")
    csrf = f'<input type="hidden" name="csrf_token" value="{escape(s.csrf_token)}">'
    seen = (
        f'<input type="hidden" name="model_version" value="{escape(e.model_version or "")}">'
        f'<input type="hidden" name="score" value="{"" if e.score is None else repr(e.score)}">'
    )
    options = "".join(
        f'<label class="finding"><input type="radio" name="finding" value="{f.value}" '
        f"required> {escape(FINDING_LABELS[f].capitalize())}</label>"
        for f in Finding
    )
    release = ""
    if s.claimed_by_me:
        release = (
            f'<form method="post" action="/studies/{escape(uid)}/release">{csrf}'
            '<button type="submit" class="secondary">Release: leave it unread</button></form>'
        )
    return (
        '<section class="panel"><h2>Your answer</h2>'
        f'<form method="post" action="/studies/{escape(uid)}/answer" class="answer" '
        f'id="answer-form">{csrf}{seen}'
        f'<fieldset><legend class="summary">Finding</legend>{options}</fieldset>'
        '<label for="note" class="summary">Note (optional)</label>'
        '<textarea id="note" name="note" maxlength="4000"></textarea></form>'
        '<div class="actions"><button type="submit" form="answer-form">Save answer: mark '
        f"read</button>{release}</div></section>"
    )


def _answers_html(answers: Sequence[AnswerRecord]) -> str:
    if not answers:
        return ""
    rows = "".join(
        f"<tr><td class=time>{_time(a.created_at)}</td><td>{escape(a.reader)}</td>"
        f"<td>{escape(FINDING_LABELS[a.finding])}</td><td>{escape(a.note or '')}</td>"
        f'<td class="num">{_score(a.score)}</td>'
        f'<td class="uid">{escape(a.model_version or "–")}</td></tr>'
        for a in answers
    )
    return (
        "<h2>Answers</h2><table><thead><tr><th>When (UTC)</th><th>Reader</th><th>Finding</th>"
        '<th>Note</th><th class="num">Score seen</th><th>Model seen</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def _population_fact(study: WorklistEntry) -> str:
    return population_text(study.population, study.population_reason) or "–"


def study_page(s: StudyView, nav: Nav | None = None) -> str:
    study = s.detail.study
    flag = '<span class="badge pos">LIKELY POSITIVE</span>' if study.flagged else "not flagged"
    verdict = ""
    if study.score is not None and s.threshold is not None:
        rel = "≥" if study.score >= s.threshold else "<"
        verdict = f" ({rel} threshold {_score(s.threshold)})"
    model = "–"
    if study.model_version:
        model = (
            f'<span class="uid">{escape(study.model_version)}</span> · '
            '<a href="/model-card">model card</a>'
        )
    facts = (
        f"<dt>Accession</dt><dd>{escape(study.accession_number or '–')}</dd>"
        f'<dt>Study Instance UID</dt><dd class="uid">{escape(study.study_instance_uid)}</dd>'
        f"<dt>Priority</dt><dd>{flag}</dd>"
        f"<dt>Status</dt><dd>{_status_html(study.status, study.reasons)}</dd>"
        f"<dt>Score</dt><dd><strong>{_score_html(study.score, study.shadow_score)}</strong>"
        f"{escape(verdict)}{_meter(study.score, s.threshold, study.flagged)}</dd>"
        f"<dt>Population</dt><dd>{escape(_population_fact(study))}</dd>"
        f"<dt>Model</dt><dd>{model}</dd>"
        f"<dt>Read state</dt><dd>{_read_html(study)}</dd>"
        f"<dt>Received (UTC)</dt><dd>{_time(study.received_at)}</dd>"
        f"<dt>Scored (UTC)</dt><dd>{_time(study.scored_at)}</dd>"
    )
    message = (
        f'<div class="notice error" role="alert">{escape(s.message)}</div>' if s.message else ""
    )
    cards = "".join(_instance_card(i, n) for n, i in enumerate(s.instances))
    body = (
        '<a class="back" href="/">← Back to the worklist</a>'
        f"{message}{_read_banner(s)}"
        '<div class="reading">'
        f'<div class="images"><h2>Images ({len(s.instances)})</h2>{cards}'
        f"{results_block(study.results)}{_answers_html(s.answers)}</div>"
        f"<aside>{_patient_html(s)}{_answer_form(s)}"
        f'<section class="panel"><h2>Study</h2><dl class="facts">{facts}</dl></section>'
        "</aside></div>"
    )
    name = study.accession_number or "…" + study.study_instance_uid[-16:]
    return _layout(f"Study {name} · CXR Triage", body, nav, active="worklist", script=True)


# ---------------------------------------------------------------------------- admin


@dataclass(frozen=True)
class AuditView:
    entries: Sequence[AuditRecord]
    filters: dict[str, str]
    next_href: str | None
    total: int


def audit_page(a: AuditView, nav: Nav | None = None) -> str:
    f = a.filters
    actions = '<option value="">any</option>' + "".join(
        f'<option value="{x.value}"{" selected" if f.get("action") == x.value else ""}>'
        f"{x.value}</option>"
        for x in AuditAction
    )

    def box(name: str, label: str, placeholder: str = "") -> str:
        return (
            f'<label>{escape(label)}<input type="text" name="{name}" '
            f'value="{escape(f.get(name, ""))}" placeholder="{escape(placeholder)}"></label>'
        )

    form = (
        '<form method="get" action="/admin/audit" class="filters">'
        + box("actor", "Who", "user, token or cli:login")
        + f'<label>Action<select name="action">{actions}</select></label>'
        + box("target", "Target", "Study UID, user, token")
        + box("since", "Since", "2026-01-31T08:00")
        + box("until", "Until", "ISO time")
        + '<button type="submit" class="secondary">Filter</button></form>'
    )
    rows = "".join(
        f'<tr data-action="{escape(e.action)}"><td class="time">{_time(e.at)}</td>'
        f"<td>{escape(e.actor)}</td><td>{escape(e.actor_kind)}</td><td>{escape(e.action)}</td>"
        f'<td class="uid">{escape(e.target or "")}</td><td>{escape(e.client_addr or "")}</td>'
        f'<td class="detail">{escape(", ".join(f"{k}={v}" for k, v in e.detail.items()))}</td>'
        "</tr>"
        for e in a.entries
    )
    table = (
        "<table><thead><tr><th>When (UTC)</th><th>Who</th><th>Kind</th><th>Action</th>"
        "<th>Target</th><th>Client</th><th>Detail</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if a.entries
        else '<div class="empty">No audit entries match.</div>'
    )
    pager = (
        f'<div class="pager"><a href="{escape(a.next_href)}" rel="next">Older ⟶</a></div>'
        if a.next_href
        else ""
    )
    body = (
        f'<p class="summary"><strong>{a.total}</strong> matching entries, newest first. '
        "The log is append-only: Postgres refuses edits and deletions. Export: "
        "<code>cxr-triage audit export --out audit.csv</code>.</p>"
        f"{form}{table}{pager}"
    )
    return _layout("Audit log · CXR Triage", body, nav, active="audit")


def users_page(
    users: Sequence[UserInfo], tokens: Sequence[TokenInfo], nav: Nav | None = None
) -> str:
    def status(u: UserInfo) -> str:
        if u.disabled:
            return "disabled"
        if u.locked_until is not None and u.locked_until > datetime.now(UTC):
            return f"locked until {_time(u.locked_until)}"
        return "active"

    user_rows = "".join(
        f"<tr><td>{escape(u.username)}</td><td>{escape(u.role.value)}</td>"
        f"<td>{escape(status(u))}</td><td class=time>{_time(u.created_at)}</td>"
        f"<td class=time>{_time(u.last_login_at)}</td></tr>"
        for u in users
    )
    token_rows = "".join(
        f"<tr><td>{escape(t.name)}</td><td>{escape(t.role.value)}</td>"
        f"<td>{escape(t.created_by)}</td><td class=time>{_time(t.created_at)}</td>"
        f"<td class=time>{_time(t.last_used_at)}</td></tr>"
        for t in tokens
    )
    body = (
        '<p class="summary">Accounts are managed at the command line: '
        "<code>cxr-triage user add NAME --role ROLE</code> (password from standard input), "
        "<code>cxr-triage user disable NAME</code>, <code>cxr-triage token create NAME "
        "--role ROLE</code>, <code>cxr-triage token revoke NAME</code>. Every change is "
        "audited.</p>"
        "<h2>Users</h2><table><thead><tr><th>User</th><th>Role</th><th>Status</th>"
        f"<th>Created (UTC)</th><th>Last sign-in (UTC)</th></tr></thead><tbody>{user_rows}"
        "</tbody></table><h2>Active API tokens</h2><table><thead><tr><th>Token</th>"
        "<th>Role</th><th>Created by</th><th>Created (UTC)</th><th>Last used (UTC)</th>"
        f"</tr></thead><tbody>{token_rows}</tbody></table>"
    )
    return _layout("Users · CXR Triage", body, nav, active="users")


# ---------------------------------------------------------------------------- other


def model_card_page(card: str, nav: Nav | None = None) -> str:
    body = (
        f'<a class="back" href="/">← Back to the worklist</a><pre class="card">{escape(card)}</pre>'
    )
    return _layout("Model card · CXR Triage", body, nav, active="card")


def ops_page(health: dict[str, object], nav: Nav | None = None) -> str:
    rows = "".join(
        f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>" for k, v in health.items()
    )
    body = (
        '<p class="summary">Machine-readable: <code>/healthz</code> (no credentials), '
        "<code>/readyz</code> and <code>/metrics</code> (role ops, or an ops token as "
        "<code>Authorization: Bearer</code>).</p>"
        f"<table><thead><tr><th>Check</th><th>Result</th></tr></thead><tbody>{rows}"
        "</tbody></table>"
    )
    return _layout("Health · CXR Triage", body, nav, active="ops")


RESULT_STATE_LABELS = {
    ResultState.RECEIVING: "receiving images: the result is not final yet",
    ResultState.COMPLETE: "complete: results not sent (no destination configured, or sending)",
    ResultState.RESULTS_SENT: "results sent to PACS",
    ResultState.RESULTS_FAILED: "results could NOT be sent to PACS",
}


def _dicom_status(code: int | None) -> str:
    return "–" if code is None else f"0x{code:04X}"


def results_block(results: StudyResults | None) -> str:
    """The study page's "Results in PACS" block: state, version, newest attempt per
    destination (Secondary Capture + SR statuses)."""
    if results is None:
        return ""
    rows = "".join(
        f'<tr><td class="uid">{escape(d.destination)}</td>'
        f'<td class="num">{d.result_version}</td><td class="num">{d.attempt}</td>'
        f'<td><span class="badge {"done" if d.status is SendStatus.SENT else "failed"}">'
        f"{escape(d.status.value)}</span>"
        + (f'<span class="reason failed">{escape(d.error)}</span>' if d.error else "")
        + f'</td><td class="uid">SC {_dicom_status(d.sc_status)} · SR '
        f"{_dicom_status(d.sr_status)}</td>"
        f'<td class="time">{_time(d.at)}</td></tr>'
        for d in results.destinations
    )
    table = (
        '<table class="results"><thead><tr><th>Destination</th><th class="num">Version</th>'
        '<th class="num">Attempt</th><th>Outcome</th><th>DICOM status</th><th>At (UTC)</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else ""
    )
    return (
        '<section class="pacs-results"><h2>Results in PACS</h2>'
        f'<dl class="facts"><dt>State</dt><dd data-result-state="{results.state.value}">'
        f"{escape(RESULT_STATE_LABELS[results.state])}</dd>"
        f"<dt>Result version</dt><dd>{results.result_version}</dd></dl>{table}</section>"
    )


def error_page(title: str, message: str, nav: Nav | None = None) -> str:
    body = (
        f'<div class="empty"><h2>{escape(title)}</h2><p>{escape(message)}</p>'
        '<p><a class="back" href="/">← Back to the worklist</a></p></div>'
    )
    return _layout(f"{title} · CXR Triage", body, nav)
