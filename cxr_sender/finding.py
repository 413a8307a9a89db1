"""The finding a registered model reports, read from its folder's ``model.json`` (no model
is loaded, no torch imported)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from cxr_common.errors import ConfigurationError
from cxr_common.model_files import ModelFinding, read_finding, shipped_model_dir
from cxr_db.registry import store as registry


def model_finding(engine: Engine, version: str) -> ModelFinding:
    """The finding model ``version`` reports, from its registered folder's ``model.json``
    (the shipped model's when the registry does not know the version). Reads files only:
    no model is loaded. Raises ``ConfigurationError`` saying what to do."""
    entry = registry.get_model(engine, version)
    folder = Path(entry.uri) if entry is not None else shipped_model_dir()
    try:
        return read_finding(folder)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"model {version}: cannot read its finding from {folder / 'model.json'} ({exc}): "
            "make the model folder readable here, as for the workers"
        ) from exc
