"""``cxr-triage model ...``, ``population ...`` and ``drift``: the model registry, the
validated population and drift at the command line.

    model list | register DIR | shadow VERSION | retire VERSION | rollback |
          activate VERSION [--accept-shipped-calibration] [--accept-no-image-check]
    population show | enable STRATUM --validation FILE | disable STRATUM
    drift [--days N]

Every change is audited with who (``--actor``, default ``cli:<OS login>``) and when. Workers
pick changes up between batches, without a restart. Handlers take an Engine, so tests call
them directly; ``add_arguments`` wires them into ``cxr_triage.cli``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine

from cxr_common.clinical import DISCLAIMER
from cxr_common.drift import PSI_WARN
from cxr_common.errors import ConfigurationError
from cxr_common.population import Stratum, Targets
from cxr_common.settings import CommonSettings, WorkerSettings
from cxr_db.audit import store as audit
from cxr_db.audit.tables import ActorKind
from cxr_db.registry import store as registry
from cxr_db.registry.store import ModelEntry, RegistryError, StratumEvidence

EngineHandler = Callable[[Engine, argparse.Namespace], int]
VALIDATION_SCHEMA = "cxr-triage/validation/1"


def actor_of(args: argparse.Namespace) -> audit.Actor:
    """``--actor NAME``, else the OS login (``cli:<login>``)."""
    from cxr_triage.accounts_cli import cli_actor

    name = getattr(args, "actor", None)
    return audit.Actor(name[:128], ActorKind.CLI) if name else cli_actor()


def _out(stdout: TextIO | None) -> TextIO:
    return stdout or sys.stdout


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- model


def model_list(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    out = _out(stdout)
    entries = registry.list_models(engine)
    if getattr(args, "json", False):
        print(json.dumps([e.as_json() for e in entries], indent=2), file=out)
        return 0
    if not entries:
        print("no model is registered (cxr-triage migrate registers the shipped one)", file=out)
        return 0
    rows = [("VERSION", "STATE", "SHA256", "CALIBRATION", "REGISTERED", "BY", "ACTIVATED")]
    rows += [
        (
            e.version,
            e.state.value.upper() if e.state is registry.ModelState.ACTIVE else e.state.value,
            e.sha256[:12],
            e.calibration_version
            + (f" (site, n={e.calibration_n})" if e.calibration_source.value == "site" else ""),
            _when(e.registered_at),
            e.registered_by,
            _when(e.activated_at),
        )
        for e in entries
    ]
    print(_table(rows), file=out)
    return 0


def model_register(
    engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None
) -> int:
    from cxr_registry import read_image_check, read_model_folder

    new = read_model_folder(
        Path(args.dir), args.calibration, version=args.version or None, reference=args.reference
    )
    check = read_image_check(Path(new.uri), new.sha256)
    entry = registry.register(engine, new, actor_of(args))
    out = _out(stdout)
    print(
        f"registered model {entry.version} ({entry.sha256[:12]}, calibration "
        f"{entry.calibration_version}) as {entry.state.value}; next: cxr-triage model shadow "
        f"{entry.version}, let the radiologists answer, cxr-triage calibrate --from-shadow "
        f"{entry.version} --out FILE, then model activate {entry.version}",
        file=out,
    )
    print(
        f"image check: {check}"
        if check
        else f"image check: none (no ood.json for these weights in {entry.uri}); activation "
        f"needs one: {registry.image_check_command(entry.uri)}",
        file=out,
    )
    return 0


def model_activate(
    engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None
) -> int:
    from cxr_registry import read_image_check

    accept = bool(getattr(args, "accept_shipped_calibration", False))
    no_check = bool(getattr(args, "accept_no_image_check", False))
    target = registry.get_model(engine, args.version)
    check = read_image_check(Path(target.uri), target.sha256) if target is not None else None
    previous = registry.activate(
        engine,
        args.version,
        actor_of(args),
        accept_shipped_calibration=accept,
        image_check=check,
        accept_no_image_check=no_check,
    )
    entry = registry.get_model(engine, args.version)
    was = f" (was {previous}, now retired; cxr-triage model rollback restores it)"
    out = _out(stdout)
    print(
        f"model {args.version} is active{was if previous else ''}; workers switch after "
        "their current batch",
        file=out,
    )
    if entry is not None and entry.calibration_source is not registry.CalibrationSource.SITE:
        print(
            f"calibration {entry.calibration_version} was not fitted on this site's answers"
            + (" (--accept-shipped-calibration, audited)" if accept else "")
            + f": fit it with cxr-triage calibrate --from-shadow {args.version} when its "
            "shadow period has answers",
            file=out,
        )
    if check is None:
        print(
            f"model {args.version} has no image-based population check"
            + (" (--accept-no-image-check, audited)" if no_check else "")
            + ": films unlike its training images are triaged; fit one with cxr-triage ood-fit",
            file=out,
        )
    return 0


def model_shadow(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    registry.shadow(engine, args.version, actor_of(args))
    print(
        f"model {args.version} scores in shadow: stored with every prediction, never sets priority",
        file=_out(stdout),
    )
    return 0


def model_retire(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    registry.retire(engine, args.version, actor_of(args))
    print(f"model {args.version} is retired: it scores nothing", file=_out(stdout))
    return 0


def model_rollback(
    engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None
) -> int:
    was, now = registry.rollback(engine, actor_of(args))
    print(f"rolled back: model {now} is active again ({was} retired)", file=_out(stdout))
    return 0


# ---------------------------------------------------------------------------- population


def stratum_evidence(
    record: dict[str, Any],
    record_sha256: str,
    stratum: Stratum,
    active: ModelEntry,
    targets: Targets,
) -> StratumEvidence:
    """Check a validation record for ``stratum`` against ``targets`` and the active model;
    raise ``RegistryError`` saying why it may not be enabled."""
    if record.get("schema") != VALIDATION_SCHEMA:
        raise RegistryError(f"not a validation record (schema {record.get('schema')!r})")
    try:
        model_sha = str(record["model"]["sha256"])
        cal_version = str(record["calibration"]["version"])
        strata = list(record["strata"])
    except (KeyError, TypeError) as exc:
        raise RegistryError(f"malformed validation record: missing {exc}") from exc
    if model_sha != active.sha256:
        raise RegistryError(
            f"the validation record is for model {model_sha[:12]}, not the active model "
            f"{active.version} ({active.sha256[:12]}): validate the active model"
        )
    if cal_version != active.calibration_version:
        raise RegistryError(
            f"the validation record used calibration {cal_version}, not the active model's "
            f"{active.calibration_version}: validate with the active calibration"
        )
    found = [s for s in strata if s.get("key") == stratum.key]
    if not found:
        keys = ", ".join(
            str(s.get("key")) for s in strata if s.get("dimension") == stratum.dimension
        )
        raise RegistryError(
            f"the validation record has no stratum {stratum.key} (it has: {keys or 'none'})"
        )
    (s,) = found[:1]
    positives = int(s.get("positives") or 0)
    ci = s.get("sensitivity_ci") or [None]
    lower = ci[0]
    problems = []
    if positives < targets.min_positives:
        problems.append(f"{positives} positives, fewer than the {targets.min_positives} required")
    if lower is None or not math.isfinite(float(lower)):
        problems.append("no sensitivity interval (no positives)")
    elif float(lower) < targets.sensitivity:
        problems.append(
            f"sensitivity lower bound {float(lower):.3f} is below the target "
            f"{targets.sensitivity:.3f}"
        )
    if targets.specificity is not None:
        spec = (s.get("specificity_ci") or [None])[0]
        if spec is None or float(spec) < targets.specificity:
            problems.append(
                f"specificity lower bound {'–' if spec is None else f'{float(spec):.3f}'} is "
                f"below the target {targets.specificity:.3f}"
            )
    record_confidence = float((record.get("targets") or {}).get("confidence", 0.95))
    if record_confidence < targets.confidence:
        problems.append(
            f"the record's intervals are {record_confidence:.0%}, narrower than the "
            f"{targets.confidence:.0%} required"
        )
    if problems:
        raise RegistryError(
            f"stratum {stratum.key} does not meet the targets: " + "; ".join(problems)
        )
    return StratumEvidence(
        model_sha256=model_sha,
        calibration_version=cal_version,
        validation_sha256=record_sha256,
        data_hash=(record.get("data") or {}).get("hash"),
        positives=positives,
        sensitivity_lower=float(lower),
    )


def _active(engine: Engine) -> ModelEntry:
    active = registry.active_model(engine)
    if active is None:
        raise RegistryError("no model is active (cxr-triage model list)")
    return active


def population_enable(
    engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None
) -> int:
    try:
        stratum = Stratum.parse(args.stratum)
        targets = Targets.parse(args.targets)
    except ValueError as exc:
        raise RegistryError(str(exc)) from exc
    path = Path(args.validation)
    try:
        raw = path.read_bytes()
        record = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the validation record {path}: {exc}") from exc
    if not isinstance(record, dict):
        raise RegistryError(f"{path} is not a validation record")
    active = _active(engine)
    evidence = stratum_evidence(record, hashlib.sha256(raw).hexdigest(), stratum, active, targets)
    registry.enable_stratum(engine, stratum, evidence, actor_of(args))
    print(
        f"enabled {stratum.key} for model {active.version}: {evidence.positives} positives, "
        f"sensitivity lower bound {evidence.sensitivity_lower:.3f}; workers widen the "
        "population after their current batch",
        file=_out(stdout),
    )
    return 0


def population_disable(
    engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None
) -> int:
    key = args.stratum.strip()
    registry.disable_stratum(engine, key, actor_of(args))
    print(f"disabled {key}", file=_out(stdout))
    return 0


def population_show(
    engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None
) -> int:
    from cxr_model import read_contract
    from cxr_model.population import population_of

    out = _out(stdout)
    active = _active(engine)
    state = registry.serving_state(engine)
    strata = state.strata_for(active)
    base = population_of(read_contract(Path(active.uri)))
    effective = base.widened(strata) if base is not None and strata else base
    rows = registry.list_strata(engine)
    if getattr(args, "json", False):
        doc = {
            "model": active.version,
            "model_population": None if base is None else _population_json(base),
            "effective_population": None if effective is None else _population_json(effective),
            "strata": [
                {
                    "stratum": r.stratum,
                    "enabled": r.enabled,
                    "applies_to_active_model": r.enabled
                    and (r.model_sha256, r.calibration_version)
                    == (active.sha256, active.calibration_version),
                    "positives": r.positives,
                    "sensitivity_lower": r.sensitivity_lower,
                    "changed_by": r.changed_by,
                    "changed_at": r.changed_at.isoformat(),
                }
                for r in rows
            ],
        }
        print(json.dumps(doc, indent=2), file=out)
        return 0
    print(f"active model {active.version} ({active.sha256[:12]})", file=out)
    if base is None:
        print(
            "  validated population: none declared in model.json (every instance unknown)", file=out
        )
    else:
        print(f"  validated population: {_population_line(base)}", file=out)
    if effective is not None and strata:
        print(f"  with enabled strata:  {_population_line(effective)}", file=out)
    if rows:
        table = [("STRATUM", "STATE", "POSITIVES", "SENS. LOWER", "BY", "WHEN")]
        for r in rows:
            applies = (r.model_sha256, r.calibration_version) == (
                active.sha256,
                active.calibration_version,
            )
            table.append(
                (
                    r.stratum,
                    ("enabled" if applies else "enabled (other model)")
                    if r.enabled
                    else "disabled",
                    str(r.positives),
                    f"{r.sensitivity_lower:.3f}",
                    r.changed_by,
                    _when(r.changed_at),
                )
            )
        print(_table(table), file=out)
    print(DISCLAIMER, file=out)
    return 0


def _population_line(pop: Any) -> str:
    return (
        f"ages {pop.age_label}; views {'/'.join(sorted(pop.views))}; "
        f"modalities {'/'.join(sorted(pop.modalities))}"
    )


def _population_json(pop: Any) -> dict[str, object]:
    return {
        "ages": pop.age_label,
        "views": sorted(pop.views),
        "modalities": sorted(pop.modalities),
        "enabled_strata": list(pop.enabled_strata),
    }


# ---------------------------------------------------------------------------- drift


def _psi(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (" !" if value >= PSI_WARN else "")


def drift(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    from cxr_db.drift import daily_drift

    out = _out(stdout)
    report = daily_drift(engine, days=args.days, min_count=args.min_count)
    if getattr(args, "json", False):
        print(
            json.dumps(
                {
                    "model_version": report.model_version,
                    "reference": report.reference_source,
                    "problem": report.problem,
                    "threshold": PSI_WARN,
                    "days": [d.as_json() for d in report.windows],
                },
                indent=2,
            ),
            file=out,
        )
        return 0
    if report.problem:
        print(f"drift cannot be measured: {report.problem}", file=out)
        return 1
    print(f"model {report.model_version}; reference: {report.reference_source}", file=out)
    rows = [("DAY (UTC)", "SCORED", "FINISHED", "SCORE PSI", "ELIGIBILITY PSI", "POPULATION PSI")]
    rows += [
        (
            d.day.isoformat(),
            str(d.n_scored),
            str(d.n_final),
            _psi(d.score_psi),
            _psi(d.eligibility_psi),
            _psi(d.population_psi),
        )
        for d in report.windows
    ]
    print(_table(rows), file=out)
    print(
        f"PSI: < 0.1 stable, 0.1-{PSI_WARN} moderate, >= {PSI_WARN} (!) a shift to look at; "
        f"'-' = fewer than {args.min_count} that day.",
        file=out,
    )
    return 0


# ---------------------------------------------------------------------------- wiring


def run_with_engine(
    handler: EngineHandler, args: argparse.Namespace, settings: CommonSettings
) -> int:
    """Resolve the configured (or embedded) Postgres, bring it to the current schema when
    embedded, make sure a model is registered, run ``handler``."""
    from cxr_db import make_engine
    from cxr_triage.services import resolve_services
    from migrations import upgrade_to_head

    services = resolve_services(settings)
    try:
        if services.embedded is not None:
            upgrade_to_head(services.database_url)
        engine = make_engine(services.database_url, pool_size=1)
        try:
            return handler(engine, args)
        except (RegistryError, ConfigurationError) as exc:
            sys.stderr.write(f"cxr-triage: {exc}\n")
            return 2
        finally:
            engine.dispose()
    finally:
        services.stop()


def _bind(handler: EngineHandler) -> Callable[[argparse.Namespace, CommonSettings], int]:
    def run(args: argparse.Namespace, settings: CommonSettings) -> int:
        return run_with_engine(handler, args, settings)

    return run


def _actor_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actor", help="who makes the change (default: cli:<OS login>)")


def add_arguments(subparsers: Any) -> None:
    """Register ``model``, ``population`` and ``drift`` on ``subparsers``."""
    model = subparsers.add_parser(
        "model",
        help="model registry: list, register, shadow, activate, retire, rollback",
        description="Registered models by version and sha256. Exactly one is active (its "
        "scores triage); shadow models score the same instances, stored under their version, "
        "never used for priority. Workers switch after their current batch, without a restart.",
    )
    sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="registered models and their state")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=_bind(model_list), settings_class=CommonSettings)
    p = sub.add_parser(
        "register",
        help="register a model folder (model.json + weights) with its calibration",
        description="Check the folder (weights sha256 equal to model.json's, the calibration "
        "fitted for that sha256) and register it as 'registered': it scores nothing until "
        "'model shadow' or 'model activate'. Keep the folder where every worker can read it.",
    )
    p.add_argument("dir", type=Path, help="model folder (what cxr-triage train writes: OUT/model)")
    p.add_argument(
        "--calibration", type=Path, help="calibration.json for it (default: DIR/calibration.json)"
    )
    p.add_argument("--version", help="version to register it under (default: model.json's)")
    p.add_argument(
        "--reference",
        type=Path,
        help="drift reference (drift_reference.json from cxr-triage validate) for this model",
    )
    _actor_arg(p)
    p.set_defaults(func=_bind(model_register), settings_class=CommonSettings)
    p = sub.add_parser(
        "activate",
        help="make VERSION the active model (the current one retires)",
        description="Refused for a model never active here whose calibration was not fitted "
        "for it on this site's answers (a new version can shift the score scale): run it in "
        "shadow, then cxr-triage calibrate --from-shadow VERSION --out FILE. "
        "--accept-shipped-calibration activates it with the calibration it was registered "
        "with, and the audit row says so. Refused too for such a model whose folder has no "
        "image-based population check fitted for its weights (ood.json: cxr-triage ood-fit "
        "--model DIR), because without it any film whose header passes is triaged, an "
        "adult's without an age among them; --accept-no-image-check activates it anyway, "
        "audited.",
    )
    p.add_argument("version")
    p.add_argument(
        "--accept-shipped-calibration",
        action="store_true",
        help="activate without a site calibration (audited)",
    )
    p.add_argument(
        "--accept-no-image-check",
        action="store_true",
        help="activate without an image-based population check (audited)",
    )
    _actor_arg(p)
    p.set_defaults(func=_bind(model_activate), settings_class=CommonSettings)
    for name, handler, help_line in (
        ("shadow", model_shadow, "score with VERSION in shadow (never sets priority)"),
        ("retire", model_retire, "stop scoring with a shadow VERSION"),
    ):
        p = sub.add_parser(name, help=help_line)
        p.add_argument("version")
        _actor_arg(p)
        p.set_defaults(func=_bind(handler), settings_class=CommonSettings)
    p = sub.add_parser("rollback", help="re-activate the model that was active before")
    _actor_arg(p)
    p.set_defaults(func=_bind(model_rollback), settings_class=CommonSettings)

    population = subparsers.add_parser(
        "population",
        help="the validated population: show it, enable or disable a validated stratum",
        description="The active model's validated population (model.json) widened by the "
        "strata the site enabled from its own validation (cxr-triage validate).",
    )
    sub = population.add_subparsers(dest="population_command", required=True, metavar="ACTION")
    p = sub.add_parser("show", help="the validated population and the enabled strata")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_bind(population_show), settings_class=CommonSettings)
    p = sub.add_parser(
        "enable",
        help="widen the population by STRATUM when the validation record shows it passes",
        description="STRATUM is age_band=BAND (<1, 1-5, 6-17, 18-64, 65+), view=VIEW or "
        "modality=MODALITY as in the validation record. Enabled only when the record was made "
        "for the active model's sha256 and calibration and the stratum has at least "
        "min_positives positives and a sensitivity interval whose lower end reaches the "
        "target. Audited.",
    )
    p.add_argument("stratum", help="e.g. age_band=18-64")
    p.add_argument(
        "--validation", required=True, type=Path, help="validation.json from cxr-triage validate"
    )
    p.add_argument(
        "--targets",
        default="",
        help="e.g. 'sensitivity=0.95,min_positives=50' (defaults: 0.95 lower bound, 50 "
        "positives, 95%% intervals)",
    )
    _actor_arg(p)
    p.set_defaults(func=_bind(population_enable), settings_class=CommonSettings)
    p = sub.add_parser("disable", help="narrow the population again (audited)")
    p.add_argument("stratum", help="e.g. age_band=18-64")
    _actor_arg(p)
    p.set_defaults(func=_bind(population_disable), settings_class=CommonSettings)

    p = subparsers.add_parser(
        "drift",
        help="daily population stability index of scores and input mix vs the reference",
        description="Per UTC day: PSI of the active model's triaging scores, of the "
        "eligibility mix and of the population mix against the model's drift reference (its "
        f"calibration sample). At or above {PSI_WARN} the worklist page shows a warning.",
    )
    p.add_argument("--days", type=int, default=7, help="days back, today included")
    p.add_argument("--min-count", type=int, default=30, help="fewer values give no PSI")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_bind(drift), settings_class=CommonSettings)


def migrate_registers_model(settings: WorkerSettings, database_url: str) -> ModelEntry:
    """What ``cxr-triage migrate`` runs after the schema: the configured model registered and
    active when no model is."""
    from cxr_db import make_engine
    from cxr_registry import ensure_configured_model

    engine = make_engine(database_url, pool_size=1)
    try:
        return ensure_configured_model(engine, settings.model_dir, settings.calibration_path)
    finally:
        engine.dispose()
