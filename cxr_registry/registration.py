"""Model registration: check a model folder and register the configured model.

Shared by ``cxr-triage migrate`` (an empty registry gets the configured model), the
scoring worker's start (the same, for a database migrated by an older version) and
``cxr-triage model register``; it needs the model's files (``cxr_model``: contract,
sha256, calibration) and the registry (``cxr_db.registry.store``), never torch or a queue.

``read_model_folder`` checks a folder before it is registered: ``model.json`` readable, the
weights' sha256 equal to the contract's, the calibration fitted for that sha256, and an
optional drift reference for the same model. ``read_image_check`` names the image-based
population check (``ood.json``) a folder carries for its weights, what ``model activate``
requires of a model before its first promotion. ``ensure_configured_model`` registers and
activates the configured model (``CXR_MODEL_DIR``, default the shipped one) when the
registry has no active model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from cxr_common.drift import DriftReference
from cxr_common.errors import ConfigurationError
from cxr_db.audit import store as audit
from cxr_db.audit.tables import ActorKind
from cxr_db.registry import store as registry
from cxr_db.registry.store import ModelEntry, NewModel

log = logging.getLogger(__name__)

#: The shipped model's drift reference (its calibration sample), next to this package's
#: model code; see ``cxr_model/drift_reference.json``'s ``source``.
REFERENCE_FILE = "drift_reference.json"


def _shipped_reference_path() -> Path:
    import cxr_model

    return Path(cxr_model.__file__).resolve().parent / REFERENCE_FILE


def read_model_folder(
    folder: Path,
    calibration: Path | None = None,
    *,
    version: str | None = None,
    reference: Path | None = None,
) -> NewModel:
    """Check a model folder and its calibration; what ``registry.register`` stores.

    ``calibration`` defaults to ``FOLDER/calibration.json``; ``reference`` to
    ``FOLDER/drift_reference.json`` when present (for the shipped folder, the shipped
    reference). Raises ``ConfigurationError`` saying what is wrong."""
    from cxr_model import WEIGHTS_DIR, ModelError, load_calibration, read_contract, verify_weights

    folder = folder.resolve()
    try:
        contract = read_contract(folder)
        verify_weights(folder, contract)
        cal_path = (calibration or folder / "calibration.json").resolve()
        if not cal_path.is_file():
            raise ConfigurationError(
                f"{folder}: no calibration; give --calibration FILE (cxr-triage calibrate "
                "fits one on a labelled sample from the site)"
            )
        cal = load_calibration(cal_path, model_sha256=contract.sha256)
    except ModelError as exc:
        raise ConfigurationError(f"{folder}: {exc}") from exc
    ref_path = reference
    if ref_path is None and (folder / REFERENCE_FILE).is_file():
        ref_path = folder / REFERENCE_FILE
    if ref_path is None and folder == WEIGHTS_DIR.resolve():
        ref_path = _shipped_reference_path()
    ref = _read_reference(ref_path, contract.sha256, explicit=reference is not None)
    return NewModel(
        version=version or contract.version,
        name=contract.name,
        sha256=contract.sha256,
        uri=str(folder),
        calibration_uri=str(cal_path),
        calibration_version=cal.version,
        reference=ref,
    )


def read_image_check(folder: Path, sha256: str) -> str | None:
    """A line naming the image-based population check in ``folder`` fitted for the weights
    ``sha256`` (method, stages read, inversion detector, threshold), or None when the folder
    has none. Raises ``ConfigurationError`` when its ``ood.json`` is unreadable, fitted for
    other weights, or its arrays differ from their recorded sha256."""
    from cxr_model import ModelError
    from cxr_model.distribution import load_distribution_check

    try:
        check = load_distribution_check(Path(folder), sha256)
    except ModelError as exc:
        raise ConfigurationError(f"{folder}: {exc}") from exc
    if check is None:
        return None
    parts = [check.method, *(["pooled + " + ", ".join(check.layers)] if check.layers else [])]
    if check.inversion_threshold is not None:
        parts.append("inversion detector")
    return f"{'; '.join(parts)}; distance threshold {check.threshold:.4g}"


def _read_reference(path: Path | None, sha256: str, *, explicit: bool) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        if explicit:
            raise ConfigurationError(f"drift reference {path} does not exist")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ref = DriftReference.from_json(data.get("drift_reference", data))
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigurationError(f"cannot read drift reference {path}: {exc}") from exc
    if ref.model_sha256 != sha256:
        if explicit:
            raise ConfigurationError(
                f"drift reference {path} is for model {ref.model_sha256[:12]}, not {sha256[:12]}"
            )
        log.warning("ignoring drift reference %s: it is for another model", path)
        return None
    return dict(data.get("drift_reference", data))


def ensure_configured_model(
    engine: Engine,
    model_dir: Path | None = None,
    calibration: Path | None = None,
    actor: audit.Actor | None = None,
) -> ModelEntry:
    """The active model; when there is none, register (or reuse) the configured one
    (``model_dir``, default the shipped model) and activate it."""
    from cxr_model import WEIGHTS_DIR

    current = registry.active_model(engine)
    if current is not None:
        if model_dir is not None and Path(current.uri) != model_dir.resolve():
            log.warning(
                "CXR_MODEL_DIR is ignored: the registry's active model is %s (%s); "
                "use cxr-triage model register/activate to change it",
                current.version,
                current.uri,
            )
        return current
    actor = actor or audit.Actor("cxr-triage (configured model)", ActorKind.CLI)
    new = read_model_folder(model_dir or WEIGHTS_DIR, calibration)
    check = read_image_check(Path(new.uri), new.sha256)
    if check is None:
        log.warning(
            "the configured model %s has no image-based population check (ood.json): films "
            "unlike its training images are triaged; fit one with cxr-triage ood-fit",
            new.version,
        )
    known = registry.get_model(engine, new.version)
    if known is None:
        return registry.register(engine, new, actor, activate_if_none=True)
    if (known.sha256, known.calibration_version) != (new.sha256, new.calibration_version):
        raise ConfigurationError(
            f"model version {new.version} is registered with other weights or calibration "
            "and no model is active: cxr-triage model list, then model activate VERSION"
        )
    try:
        # the configured model, brought back when none is active (audited as such)
        registry.activate(
            engine,
            known.version,
            actor,
            accept_shipped_calibration=True,
            image_check=check,
            accept_no_image_check=True,
        )
    except registry.RegistryError:
        pass  # another worker activated a model at the same moment
    active = registry.active_model(engine)
    if active is None:
        raise ConfigurationError("no model is active in the registry")
    return active
