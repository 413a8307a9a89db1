"""Server-rendered HTML: no scripts, no external assets, every value escaped."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from cxr_common.clinical import DISCLAIMER
from cxr_db.reads import InstanceDetail, StudyDetail, WorklistEntry
from cxr_db.statuses import PENDING_STATUSES, REASON_STATUSES, InstanceStatus, StatusReason
from worklist.present import SHADOW_NOTE, badge_note, population_text, status_label

REFRESH_S = 15

_CSS = """
:root { --ink:#1d2733; --muted:#5b6b7c; --line:#dde3ea; --bg:#f4f6f9; --head:#17324d;
  --pos:#b3261e; --pos-bg:#fdecea; --warn-bg:#fff4d6; --warn-line:#e0b341; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",
  sans-serif; color:var(--ink); background:var(--bg); }
header { background:var(--head); color:#fff; padding:12px 24px; display:flex;
  align-items:baseline; gap:16px; }
header h1 { font-size:18px; margin:0; font-weight:600; letter-spacing:.2px; }
header a { color:#fff; text-decoration:none; }
header .meta { margin-left:auto; color:#c5d3e0; font-size:13px; }
.disclaimer { background:var(--warn-bg); border-bottom:1px solid var(--warn-line);
  padding:8px 24px; font-weight:600; color:#5c4200; }
main { padding:16px 24px 32px; }
table { width:100%; border-collapse:collapse; background:#fff; border:1px solid var(--line); }
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
a.study { color:#0b57a4; font-weight:600; text-decoration:none; }
a.study:hover { text-decoration:underline; }
.uid { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px;
  color:var(--muted); }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
  font-weight:700; white-space:nowrap; }
.badge.pos { background:var(--pos); color:#fff; }
.badge.failed { background:#fbe3e1; color:var(--pos); border:1px solid #f0b7b2; }
.badge.not_eligible { background:#eceff2; color:#4a5561; border:1px solid #cfd6dd; }
.badge.pending { background:#e4eefa; color:#1f5391; border:1px solid #bcd2ee; }
.badge.done { background:#e5f4ea; color:#1e6b3a; border:1px solid #bfe1c9; }
.reason { display:block; margin-top:3px; font-size:12px; }
.reason.failed { color:var(--pos); }
.reason.not_eligible { color:#5f6b77; }
.empty { padding:32px; text-align:center; color:var(--muted); background:#fff;
  border:1px solid var(--line); }
dl.facts { display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; margin:0 0 16px;
  background:#fff; border:1px solid var(--line); padding:12px 16px; }
dl.facts dt { color:var(--muted); }
dl.facts dd { margin:0; }
.images { display:flex; flex-wrap:wrap; gap:16px; }
.image { background:#fff; border:1px solid var(--line); padding:12px; width:440px; }
.image.flagged { border-color:var(--pos); box-shadow:inset 0 4px 0 var(--pos); }
.image img { display:block; width:100%; height:auto; background:#000; }
.image dl.facts { border:0; padding:8px 0 0; margin:0; }
.noimg { margin:0 0 4px; padding:24px 8px; text-align:center; color:var(--muted);
  background:#eef2f6; border:1px dashed #c9d2dc; }
h2 { font-size:16px; margin:20px 0 8px; }
.shadow { color:#8a949e; font-style:italic; }
.population { display:block; margin-top:3px; font-size:12px; color:#5f6b77; }
.population.outside { color:#7a4b00; }
.drift { background:var(--warn-bg); border:1px solid var(--warn-line); padding:8px 12px;
  margin:0 0 12px; color:#5c4200; }
.back { display:inline-block; margin-bottom:12px; color:#0b57a4; text-decoration:none; }
"""


def _time(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


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


def _score_html(score: float | None, shadow: float | None) -> str:
    """The triaging score, or a greyed shadow score that does not triage."""
    if score is None and shadow is not None:
        return f'<span class="shadow" title="{escape(SHADOW_NOTE)}">({shadow:.3f})</span>'
    return _score(score)


def drift_banner(alerts: Sequence[str], threshold: float) -> str:
    """A warning above the worklist when today's inputs or scores drifted from the model's
    calibration sample (``cxr_db.drift``); empty when nothing crossed ``threshold``."""
    if not alerts:
        return ""
    what = ", ".join(alerts)
    return (
        f'<div class="drift" role="alert">Drift warning: the {escape(what)} distribution of '
        f"the last 24 hours differs from the model's calibration sample (PSI ≥ {threshold:g}). "
        "Scores may be less reliable than validated: see <code>cxr-triage drift</code>.</div>"
    )


def study_href(study_instance_uid: str) -> str:
    return "/studies/" + quote(study_instance_uid, safe=".")


def _layout(title: str, meta: str, body: str, refresh: bool = False) -> str:
    refresh_tag = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh_tag}<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        '<header><h1><a href="/">CXR Triage · Reading worklist</a></h1>'
        f'<span class="meta">{meta}</span></header>'
        f'<div class="disclaimer" role="note">{escape(DISCLAIMER)}</div>'
        f"<main>{body}</main></body></html>\n"
    )


def _study_label(accession: str | None, study_instance_uid: str) -> str:
    if accession:
        return escape(accession)
    return escape("…" + study_instance_uid[-16:])


def worklist_page(entries: Sequence[WorklistEntry], now: datetime, banner: str = "") -> str:
    flagged = sum(e.flagged for e in entries)
    meta = escape(
        f"{len(entries)} studies · {flagged} likely positive · "
        f"updated {_time(now)} UTC · refreshes every {REFRESH_S} s"
    )
    if not entries:
        body = banner + '<div class="empty">No studies on the worklist yet.</div>'
        return _layout("Worklist · CXR Triage", meta, body, refresh=True)
    rows = []
    for rank, e in enumerate(entries, 1):
        flag = '<span class="badge pos">LIKELY POSITIVE</span>' if e.flagged else ""
        rows.append(
            f'<tr class="{"flagged" if e.flagged else "routine"}"'
            f' data-study="{escape(e.study_instance_uid)}">'
            f'<td class="num">{rank}</td><td>{flag}</td>'
            f'<td><a class="study" href="{escape(study_href(e.study_instance_uid))}">'
            f"{_study_label(e.accession_number, e.study_instance_uid)}</a>"
            f'<br><span class="uid">{e.instances} image{"s" if e.instances != 1 else ""}</span>'
            f"</td><td>{_status_html(e.status, e.reasons)}"
            f"{population_html(e.population, e.population_reason)}</td>"
            f'<td class="num score">{_score_html(e.score, e.shadow_score)}</td>'
            f'<td class="uid model">{escape(e.model_version or "–")}</td>'
            f'<td class="time">{_time(e.received_at)}</td>'
            f'<td class="time">{_time(e.scored_at)}</td></tr>'
        )
    body = banner + (
        '<table><thead><tr><th class="num">#</th><th>Priority</th><th>Accession / study</th>'
        '<th>Status</th><th class="num">Score</th><th>Model</th><th>Received (UTC)</th>'
        "<th>Scored (UTC)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    return _layout("Worklist · CXR Triage", meta, body, refresh=True)


def _instance_score_html(i: InstanceDetail) -> str:
    if i.triage is False and i.probability is not None:
        return _score_html(None, i.probability) + population_html(i.population, i.population_reason)
    return _score(i.probability) + population_html(i.population, i.population_reason)


def _instance_card(i: InstanceDetail) -> str:
    img = '<p class="noimg">No heatmap: this image was not scored.</p>'
    if i.scored_at is not None and not i.has_heatmap:
        img = '<p class="noimg">No heatmap was stored for this image.</p>'
    if i.has_heatmap:
        src = "/heatmaps/" + quote(i.sop_instance_uid, safe=".") + ".png"
        img = (
            f'<img src="{escape(src)}" alt="Grad-CAM heatmap overlay of image '
            f'{escape(i.sop_instance_uid)}" width="416" height="416">'
        )
    if i.flagged:
        flag = '<span class="badge pos">LIKELY POSITIVE</span>'
    elif i.triage is False:
        flag = "not triaged: shadow score (outside the validated population)"
    elif i.flagged is None:
        flag = "–"
    else:
        flag = "below threshold"
    facts = (
        f'<dt>SOP Instance UID</dt><dd class="uid">{escape(i.sop_instance_uid)}</dd>'
        f"<dt>Status</dt><dd>{_status_html(i.status, i.reasons)}</dd>"
        f"<dt>View</dt><dd>{escape(i.view_position or '–')}</dd>"
        f"<dt>Probability</dt><dd>{_instance_score_html(i)}</dd>"
        f"<dt>Threshold</dt><dd>{_score(i.threshold)}</dd>"
        f"<dt>Flag</dt><dd>{flag}</dd>"
        f'<dt>Model version</dt><dd class="uid">{escape(i.model_version or "–")}</dd>'
        f"<dt>Received (UTC)</dt><dd>{_time(i.received_at)}</dd>"
        f"<dt>Scored (UTC)</dt><dd>{_time(i.scored_at)}</dd>"
    )
    cls = "image flagged" if i.flagged else "image"
    return f'<section class="{cls}">{img}<dl class="facts">{facts}</dl></section>'


def _population_fact(study: WorklistEntry) -> str:
    return population_text(study.population, study.population_reason) or "–"


def study_page(detail: StudyDetail) -> str:
    study = detail.study
    flag = '<span class="badge pos">LIKELY POSITIVE</span>' if study.flagged else "not flagged"
    facts = (
        f"<dt>Accession</dt><dd>{escape(study.accession_number or '–')}</dd>"
        f'<dt>Study Instance UID</dt><dd class="uid">{escape(study.study_instance_uid)}</dd>'
        f"<dt>Priority</dt><dd>{flag}</dd>"
        f"<dt>Status</dt><dd>{_status_html(study.status, study.reasons)}</dd>"
        f"<dt>Score</dt><dd>{_score_html(study.score, study.shadow_score)}</dd>"
        f"<dt>Population</dt><dd>{escape(_population_fact(study))}</dd>"
        f'<dt>Model version</dt><dd class="uid">{escape(study.model_version or "–")}</dd>'
        f"<dt>Received (UTC)</dt><dd>{_time(study.received_at)}</dd>"
        f"<dt>Scored (UTC)</dt><dd>{_time(study.scored_at)}</dd>"
    )
    cards = "".join(_instance_card(i) for i in detail.instances)
    body = (
        '<a class="back" href="/">← Back to the worklist</a>'
        f'<dl class="facts">{facts}</dl>'
        f'<h2>Images ({len(detail.instances)})</h2><div class="images">{cards}</div>'
    )
    name = study.accession_number or "…" + study.study_instance_uid[-16:]
    return _layout(f"Study {name} · CXR Triage", escape(f"Study {name}"), body)


def error_page(title: str, message: str) -> str:
    body = (
        f'<div class="empty"><h2>{escape(title)}</h2><p>{escape(message)}</p>'
        '<p><a class="back" href="/">← Back to the worklist</a></p></div>'
    )
    return _layout(f"{title} · CXR Triage", "", body)
