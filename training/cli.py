"""``cxr-triage train | evaluate | calibrate | predict | validate``: ``cxr_triage.cli``
forwards these commands with their arguments to ``main`` (and imports this module only then).

Every output is clinical decision support, not a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cxr_common.clinical import DISCLAIMER
from cxr_common.errors import CxrTriageError

if TYPE_CHECKING:
    from sqlalchemy import Engine

DATA_HELP = (
    "a folder <root>/<split>/<NORMAL|PNEUMONIA>/* or <root>/<NORMAL|PNEUMONIA>/*, a labels.csv "
    "(path,label[,split,site_fold,subtype,...]; a folder holding labels.csv works too) or an "
    "RSNA-style CSV (patientId,Target) with <patientId>.dcm beside it"
)
FILTER_HELP = (
    "keep rows whose columns equal these values, e.g. 'split=test,site_fold=dev' "
    "('a|b' = either); for a folder only 'split=' applies"
)


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        type=_optional_path,
        default=Path("cache"),
        help="where decoded, resized images are cached ('' = no cache)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def register(subparsers: Any) -> None:
    """Add train, evaluate, calibrate, predict and validate to an argparse subparsers object."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser(
        "train",
        formatter_class=fmt,
        help="fine-tune the pneumonia classifier",
        description="Train on --train-filter rows, monitor --val-filter rows and choose the "
        "exported epoch on --select-filter rows (site dev) if given, else on val AUC. Writes "
        "OUT/model (best), OUT/model-eN (each epoch), checkpoint-last.pt, history.json. "
        f"{DISCLAIMER}",
    )
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--train-filter", default="split=train", help=FILTER_HELP)
    p.add_argument("--val-filter", default="split=val", help="rows used for validation")
    p.add_argument(
        "--select-filter",
        default="",
        help="rows used to choose the exported epoch, e.g. split=test,site_fold=dev",
    )
    p.add_argument(
        "--backbone",
        default="lite0",
        choices=["lite0", "lite0-scratch", "resnet18"],
        help="lite0 = EfficientNet-Lite0 from offline ImageNet weights",
    )
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--augment", default="strong", choices=["none", "mild", "strong"])
    p.add_argument(
        "--intensity",
        default="none",
        choices=["none", "histeq"],
        help="intensity normalisation stored in the contract (histeq = histogram "
        "equalisation before scaling, in training and at inference)",
    )
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--mixup", type=float, default=0.0, help="mixup Beta(a, a); 0 = off")
    p.add_argument("--init-from", default="", help="weights folder to start from (site adaptation)")
    p.add_argument(
        "--input-size",
        type=int,
        default=224,
        help="square input side in pixels, stored in the contract (with --init-from: fine-tune "
        "a 224 px model at a higher resolution for its last epochs)",
    )
    p.add_argument(
        "--groups",
        default="",
        help="groups.json from 'cxr-triage groups': sample so that every acquisition group "
        "gives both classes equally (weight n_g / n_(g,class)); '' = plain shuffling",
    )
    p.add_argument("--group-floor", type=int, default=10, help="smallest cell size in the weights")
    p.add_argument(
        "--burn-in-text",
        type=float,
        default=0.0,
        help="share of training images given synthetic markers/timestamps/digits (both classes)",
    )
    p.add_argument(
        "--freeze-before",
        default="",
        help="freeze the layers before this module (e.g. blocks.4) and train the rest",
    )
    p.add_argument(
        "--style",
        action="store_true",
        help="acquisition-style randomisation: histogram matching, local contrast, speckle",
    )
    p.add_argument("--seed", type=int, default=20261123)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last.pt")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "evaluate",
        formatter_class=fmt,
        help="metrics.json + ROC/PR/reliability/confusion/Grad-CAM plots on a labelled set",
        description="Score a labelled set. Without --model and --calibration it uses the "
        "shipped model and the shipped site calibration; with --model and no --calibration it "
        f"uses the model's uncalibrated val threshold. {DISCLAIMER}",
    )
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--filter", default=None, help=FILTER_HELP)
    p.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="weights folder with model.json (repeat for an averaged ensemble)",
    )
    p.add_argument("--calibration", type=Path, default=None, help="calibration.json to apply")
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="ignore calibration; use sigmoid(logit) and the val threshold",
    )
    p.add_argument("--tta", action="store_true", help="average logits over 5 zoom/rotate views")
    p.add_argument("--no-cams", action="store_true", help="skip the Grad-CAM grid")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "calibrate",
        formatter_class=fmt,
        help="fit a site calibration (threshold for target sensitivity + temperature)",
        description="Fit temperature(+bias) scaling and the operating threshold on a labelled "
        "sample from the site. The threshold is the highest one whose one-sided Clopper-Pearson "
        "lower bound on sensitivity reaches the target, so the target should hold on unseen "
        f"studies. Writes a versioned record tied to the model's sha256. {DISCLAIMER}",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help=DATA_HELP)
    source.add_argument(
        "--from-shadow",
        metavar="VERSION",
        default=None,
        help="fit for registered model VERSION from the database: its shadow scores against "
        "the radiologists' answers (latest answer per read study, 'other' left out); "
        "stores the record at --out and registers it for VERSION, so 'model activate "
        "VERSION' accepts it (audited)",
    )
    p.add_argument("--filter", default=None, help=FILTER_HELP)
    p.add_argument("--model", type=Path, default=None, help="weights folder (default: shipped)")
    p.add_argument(
        "--min-studies",
        type=int,
        default=50,
        help="--from-shadow: fewest answered studies to fit on",
    )
    p.add_argument(
        "--min-per-class",
        type=int,
        default=10,
        help="--from-shadow: fewest pneumonia and no-pneumonia answers to fit on",
    )
    p.add_argument("--actor", help="--from-shadow: who fits it (default: cli:<OS login>)")
    p.add_argument("--target-sensitivity", type=float, default=0.95)
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="one-sided confidence of the sensitivity lower bound",
    )
    p.add_argument("--no-bias", action="store_true", help="temperature only (no bias term)")
    p.add_argument("--version", default=None, help="record version (default: model+timestamp)")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="calibration.json to write (--from-shadow: where every worker can read it)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_calibrate)

    p = subparsers.add_parser(
        "groups",
        formatter_class=fmt,
        help="acquisition-group audit: ImageNet-feature clusters, class balance, errors per group",
        description="Embed every labelled image with the ImageNet EfficientNet-Lite0 weights "
        "(before fine-tuning), fit k-means on split=train, assign the other rows, and tabulate "
        "class balance per group (train) and the model's errors per group (test, with its "
        "calibration). Writes OUT/groups.json (centroids, per-image groups, table; the input of "
        f"'train --groups') and OUT/groups.md. {DISCLAIMER}",
    )
    p.add_argument("--data", required=True, help="labels.csv with split (and label) columns")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--k", type=int, default=10, help="number of clusters")
    p.add_argument("--seed", type=int, default=20261123, help="k-means seed")
    p.add_argument("--model", type=Path, default=None, help="weights folder (default: shipped)")
    p.add_argument("--calibration", type=Path, default=None, help="default: shipped")
    p.add_argument("--no-score", action="store_true", help="class balance only, no model")
    _add_common(p)
    p.set_defaults(func=cmd_groups)

    p = subparsers.add_parser(
        "predict",
        formatter_class=fmt,
        help="score DICOM / image files offline",
        description=f"Score files (score, flag, eligibility, optional heatmap). {DISCLAIMER}",
    )
    p.add_argument("paths", nargs="+", type=Path, help="DICOM, JPEG or PNG files or folders")
    p.add_argument("--model", type=Path, default=None, help="weights folder (default: shipped)")
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="calibration.json (default: shipped, when the model is the shipped one)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--heatmap-dir", type=Path, default=None, help="write Grad-CAM overlay PNGs")
    p.add_argument(
        "--population-policy",
        choices=["enforce", "off"],
        default=None,
        help="as the worker's CXR_POPULATION_POLICY (default: that variable, else enforce)",
    )
    p.add_argument(
        "--unknown-age",
        choices=["in_scope", "outside"],
        default=None,
        help="as the worker's CXR_UNKNOWN_AGE (default: that variable, else in_scope)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "validate",
        formatter_class=fmt,
        help="site validation of the active model and calibration, by stratum",
        description="Score the site's labelled studies with the model and its calibration and "
        "report, overall and per age band, sex, view, manufacturer, modality and population: "
        "n, positives, AUC with bootstrap CI, sensitivity and specificity at the threshold with "
        "Clopper-Pearson intervals, and pass/fail against --targets. Strata come from the DICOM "
        "header, else from the optional columns age_years,sex,view,manufacturer,modality. "
        "Writes OUT/validation.json (the record), OUT/validation.html and OUT/predictions.csv. "
        f"Exit status 0 when the overall set passes, 1 when it does not, 2 on bad input. "
        f"{DISCLAIMER}",
    )
    p.add_argument(
        "--labels",
        required=True,
        help="labels.csv (path,label[,age_years,sex,view,manufacturer,modality,...]; "
        "'cxr-triage answers export' writes one) or a folder holding labels.csv",
    )
    p.add_argument("--filter", default=None, help=FILTER_HELP)
    p.add_argument("--out", type=Path, default=Path("validation"), help="output folder")
    p.add_argument(
        "--targets",
        default="",
        help="e.g. 'sensitivity=0.95,min_positives=50,specificity=0.80,confidence=0.95' "
        "(defaults: sensitivity 0.95 as the interval's lower end, 50 positives, no "
        "specificity target, 95%% intervals)",
    )
    p.add_argument("--model", type=Path, default=None, help="weights folder (default: shipped)")
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="calibration.json (default: MODEL/calibration.json, else the shipped one)",
    )
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for AUC CIs")
    _add_common(p)
    p.set_defaults(func=cmd_validate)

    from training import ood

    ood.register(subparsers, fmt, DISCLAIMER)


def _logging(args: argparse.Namespace) -> None:
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def cmd_groups(args: argparse.Namespace) -> int:
    _logging(args)
    from training.groups import run_groups

    res = run_groups(
        args.data,
        args.out,
        k=args.k,
        seed=args.seed,
        model_dir=args.model,
        calibration=args.calibration,
        cache_dir=args.cache_dir,
        score=not args.no_score,
    )
    print((args.out / "groups.md").read_text(encoding="utf-8"))
    print(json.dumps({"worst_group": res["worst_group"], "disclaimer": DISCLAIMER}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _logging(args)
    from training.train import TrainConfig, train

    cfg = TrainConfig(
        data=str(args.data),
        out=str(args.out),
        train_filter=args.train_filter,
        val_filter=args.val_filter,
        select_filter=args.select_filter,
        backbone=args.backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        augment=args.augment,
        label_smoothing=args.label_smoothing,
        mixup=args.mixup,
        seed=args.seed,
        cache_dir=str(args.cache_dir) if args.cache_dir else "",
        resume=args.resume,
        max_steps_per_epoch=args.max_steps_per_epoch,
        threads=args.threads,
        device=args.device or "",
        init_from=args.init_from,
        input_size=args.input_size,
        groups=args.groups,
        group_floor=args.group_floor,
        burn_in_text=args.burn_in_text,
        style=args.style,
        freeze_before=args.freeze_before,
    )
    summary = train(cfg)
    last = summary["history"][-1] if summary["history"] else {}
    print(
        json.dumps(
            {
                "out": summary["out"],
                "train_seconds": summary["train_seconds"],
                "last_epoch": last,
                "disclaimer": DISCLAIMER,
            },
            indent=2,
        )
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _logging(args)
    from training.card import SUMMARY_KEYS
    from training.evaluate import evaluate

    m = evaluate(
        str(args.data),
        args.filter,
        args.out,
        args.model,
        args.calibration,
        args.no_calibration,
        args.tta,
        args.cache_dir,
        args.device,
        not args.no_cams,
    )
    print(
        json.dumps(
            {k: m[k] for k in SUMMARY_KEYS} | {"out": str(args.out), "disclaimer": DISCLAIMER},
            indent=2,
        )
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    _logging(args)
    if args.from_shadow:
        from cxr_common.settings import CommonSettings
        from cxr_triage.models_cli import run_with_engine

        return run_with_engine(calibrate_from_shadow, args, CommonSettings())
    from cxr_model import WEIGHTS_DIR, load_model
    from training.calibrate import fit_calibration
    from training.data import load_resized, load_samples
    from training.evaluate import model_logits

    model = load_model(args.model or WEIGHTS_DIR, args.device)
    samples = load_samples(str(args.data), args.filter)
    images = load_resized(samples, model.contract.input_size, args.cache_dir)
    import numpy as np

    y = np.array([s.label for s in samples])
    logits = model_logits(model, images)
    cal = fit_calibration(
        y,
        logits,
        model_sha256=model.contract.sha256,
        model_version=model.contract.version,
        target_sensitivity=args.target_sensitivity,
        confidence=args.confidence,
        with_bias=not args.no_bias,
        version=args.version,
        fitted_on={"data": str(args.data), "filter": args.filter or ""},
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cal.save(args.out)
    print(json.dumps(cal.to_json(), indent=2))
    if not cal.fitted_on.get("target_attainable", True):
        print(
            f"warning: sensitivity lower bound {cal.fitted_on['sensitivity_lcb']:.3f} < "
            f"target even when flagging every positive; collect more site positives",
            file=sys.stderr,
        )
    return 0


def calibrate_from_shadow(
    engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None
) -> int:
    """``calibrate --from-shadow VERSION --out FILE``: fit VERSION's calibration on its
    shadow scores against the answers, write it and register it for VERSION (audited)."""
    import numpy as np

    from cxr_db.registry import store as registry
    from cxr_triage.models_cli import actor_of
    from training.calibrate import ShadowSampleError, fit_from_shadow

    out = stdout or sys.stdout
    version = str(args.from_shadow)
    entry = registry.get_model(engine, version)
    if entry is None:
        raise registry.RegistryError(
            f"no model version {version!r} is registered (cxr-triage model list)"
        )
    sample = registry.shadow_sample(engine, version)
    try:
        cal = fit_from_shadow(
            np.array(sample.logits),
            np.array(sample.labels),
            model_sha256=entry.sha256,
            model_version=version,
            studies_other=sample.studies_other,
            min_studies=args.min_studies,
            min_per_class=args.min_per_class,
            target_sensitivity=args.target_sensitivity,
            confidence=args.confidence,
            with_bias=not args.no_bias,
        )
    except ShadowSampleError as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 2
    path = Path(args.out).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    cal.save(path)
    registry.set_site_calibration(
        engine,
        version,
        calibration_uri=str(path),
        calibration_version=cal.version,
        n=sample.n,
        positives=sample.positives,
        actor=actor_of(args),
    )
    print(
        f"calibration {cal.version} fitted for model {version} on {sample.n} answered studies "
        f"({sample.positives} pneumonia, {sample.n - sample.positives} no pneumonia"
        + (f"; {sample.studies_other} answered 'other' left out" if sample.studies_other else "")
        + f"): threshold {cal.threshold:.3f}, sample sensitivity "
        f"{cal.fitted_on['sample_sensitivity']:.3f} (lower bound "
        f"{cal.fitted_on['sensitivity_lcb']:.3f}), specificity "
        f"{cal.fitted_on['sample_specificity']:.3f}; written to {path} and registered for "
        f"{version}: cxr-triage model activate {version} accepts it now",
        file=out,
    )
    if not cal.fitted_on.get("target_attainable", True):
        print(
            f"warning: sensitivity lower bound {cal.fitted_on['sensitivity_lcb']:.3f} < target "
            "even when flagging every positive; keep the model in shadow for more positives",
            file=out,
        )
    print(DISCLAIMER, file=out)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _logging(args)
    from training.predict import predict_paths

    results = predict_paths(
        args.paths,
        args.model,
        args.calibration,
        args.heatmap_dir,
        args.device,
        args.population_policy,
        args.unknown_age,
    )
    if args.json:
        print(json.dumps({"results": results, "disclaimer": DISCLAIMER}, indent=2))
    else:
        for r in results:
            if r.get("error"):
                print(f"{r['path']}: ERROR {r['error']}")
                continue
            elig = "eligible" if r["eligible"] else "NOT eligible (" + "; ".join(r["reasons"]) + ")"
            print(
                f"{r['path']}: P(pneumonia)={r['probability']:.3f} "
                f"{'FLAG' if r['flagged'] else 'no flag'} (t={r['threshold']:.3f}) {elig}; "
                f"population {r['population']} by {r['population_check']}"
                f"{'' if r['triage'] else ' (shadow)'}: {r['population_reason']}"
                + (f" heatmap={r['heatmap']}" if r.get("heatmap") else "")
            )
        print(DISCLAIMER)
    return 0 if all(not r.get("error") for r in results) else 1


def cmd_validate(args: argparse.Namespace) -> int:
    _logging(args)
    import shlex

    from cxr_common.errors import CxrTriageError
    from training.validate import Targets, validate

    try:
        targets = Targets.parse(args.targets)
        record = validate(
            args.labels,
            args.filter,
            args.out,
            targets,
            args.model,
            args.calibration,
            args.cache_dir,
            args.device,
            args.n_boot,
            command=shlex.join(["cxr-triage", *sys.argv[1:]]),
        )
    except (ValueError, OSError, CxrTriageError) as exc:
        print(f"validate: {exc}", file=sys.stderr)
        return 2
    overall = record["overall"]
    print(
        json.dumps(
            {
                "pass": record["pass"],
                "n": overall["n"],
                "positives": overall["positives"],
                "auc": overall["auc"],
                "auc_ci95": overall["auc_ci95"],
                "sensitivity": overall["sensitivity"],
                "sensitivity_ci": overall["sensitivity_ci"],
                "specificity": overall["specificity"],
                "specificity_ci": overall["specificity_ci"],
                "reasons": overall["reasons"],
                "strata_passing": [s["key"] for s in record["strata"] if s["result"] == "pass"],
                "outside_by_image": (record.get("distribution") or {}).get("outside_by_image"),
                "share_outside_by_image": (record.get("distribution") or {}).get(
                    "share_outside_by_image"
                ),
                "record": str(args.out / "validation.json"),
                "report": str(args.out / "validation.html"),
                "disclaimer": DISCLAIMER,
            },
            indent=2,
        )
    )
    return 0 if record["pass"] else 1


def main(argv: list[str] | None = None, prog: str = "python -m training.cli") -> int:
    """``PROG <command> ...``: what ``cxr-triage train|evaluate|calibrate|predict`` runs
    (``prog="cxr-triage"``), and ``python -m training.cli`` stand-alone."""
    parser = argparse.ArgumentParser(prog=prog, description=DISCLAIMER)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError, CxrTriageError) as exc:
        if getattr(args, "verbose", False):
            raise  # -v: the whole traceback
        print(f"{prog} {args.command}: {exc} (-v shows where)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
