"""A model folder's files read as data, without loading the model (no torch): where the
shipped model is, and the finding a model reports.

The finding is declared in the model's ``model.json`` (the contract, see
:mod:`cxr_model.contract`)::

    "finding": {
      "name": "pneumonia",
      "display": "Pneumonia",
      "code": {"value": "233604007", "scheme": "SCT", "meaning": "Pneumonia"}
    }

``name`` identifies it in data, ``display`` is what people read (worklist, Secondary
Capture, heatmap note), ``code`` is how the SR codes it (scheme designator as in PS3.16,
e.g. ``SCT`` for SNOMED CT). A model for another finding declares its own: nothing else
changes.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelFinding", "read_finding", "shipped_model_dir"]


@dataclass(frozen=True)
class ModelFinding:
    """The finding a model reports, as its ``model.json`` declares it."""

    name: str
    display: str
    code_value: str
    code_scheme: str
    code_meaning: str

    @classmethod
    def from_json(cls, data: Any) -> ModelFinding:
        """Parse ``model.json``'s ``finding`` object; ValueError says what is wrong."""
        try:
            code = data["code"]
            finding = cls(
                name=str(data["name"]),
                display=str(data["display"]),
                code_value=str(code["value"]),
                code_scheme=str(code["scheme"]),
                code_meaning=str(code["meaning"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(
                'model.json "finding" needs "name", "display" and "code" with "value", '
                f'"scheme" and "meaning" (missing or malformed: {exc})'
            ) from exc
        if not all(vars(finding).values()):
            raise ValueError('model.json "finding" has an empty value')
        return finding

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display": self.display,
            "code": {
                "value": self.code_value,
                "scheme": self.code_scheme,
                "meaning": self.code_meaning,
            },
        }


def read_finding(model_dir: Path) -> ModelFinding:
    """The finding the model in ``model_dir`` reports (its ``model.json``). Raises OSError
    when the file cannot be read, ValueError when it or its finding is malformed."""
    data = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "finding" not in data:
        raise ValueError(f"{model_dir / 'model.json'} declares no finding")
    return ModelFinding.from_json(data["finding"])


def shipped_model_dir() -> Path:
    """The folder of the model shipped in the ``cxr_model`` package, found without
    importing it (which would load torch)."""
    spec = importlib.util.find_spec("cxr_model")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the cxr_model package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "weights"
