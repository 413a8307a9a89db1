"""The model contract stored next to the weights as ``model.json``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr_common.clinical import DISCLAIMER
from cxr_common.model_files import ModelFinding
from cxr_model.errors import ContractError, ModelIntegrityError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ModelContract:
    """Everything a caller needs to feed the network and read its output."""

    name: str
    version: str
    architecture: str
    input_size: int
    channels: int
    scaling: str
    labels: tuple[str, ...]
    output: str
    val_threshold: float
    weights_file: str
    sha256: str
    #: What the positive output means: name, display text and code (``model.json``'s
    #: "finding"; :class:`cxr_common.model_files.ModelFinding`).
    finding: ModelFinding
    intensity: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)
    #: The population the model was validated on, as stored; typed by
    #: :func:`cxr_model.population.population_of` (empty: none declared).
    population: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        data["finding"] = self.finding.to_json()
        if not self.population:
            del data["population"]
        data["disclaimer"] = DISCLAIMER
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelContract:
        try:
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                architecture=str(data["architecture"]),
                input_size=int(data["input_size"]),
                channels=int(data["channels"]),
                scaling=str(data["scaling"]),
                labels=tuple(str(x) for x in data["labels"]),
                output=str(data.get("output", "logit")),
                val_threshold=float(data["val_threshold"]),
                weights_file=str(data["weights_file"]),
                sha256=str(data["sha256"]),
                finding=ModelFinding.from_json(data["finding"]),
                intensity=str(data.get("intensity", "none")),
                extra=dict(data.get("extra", {})),
                population=dict(data.get("population") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed model contract: {exc}") from exc


def read_contract(weights_dir: Path) -> ModelContract:
    path = weights_dir / "model.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot read {path}: {exc}") from exc
    return ModelContract.from_json(data)


def write_contract(contract: ModelContract, weights_dir: Path) -> Path:
    path = weights_dir / "model.json"
    path.write_text(json.dumps(contract.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(weights_dir: Path, contract: ModelContract) -> Path:
    """The weights file ``contract`` names in ``weights_dir``, once its sha256 is the one
    ``model.json`` declares: the one integrity check every loader and registration runs.

    Raises :class:`~cxr_model.errors.ModelIntegrityError` saying what to do."""
    weights = weights_dir / contract.weights_file
    if not weights.is_file():
        raise ModelIntegrityError(
            f"weights file {weights} is missing: copy the model folder whole "
            f"(model.json and {contract.weights_file} together)"
        )
    actual = sha256_file(weights)
    if actual != contract.sha256:
        raise ModelIntegrityError(
            f"weights file {weights} has sha256 {actual[:12]}..., but model.json declares "
            f"{contract.sha256[:12]}...: the weights were changed or belong to another "
            "model; restore the model folder as it was exported (model.json and its weights "
            "together), or export the model again"
        )
    return weights
