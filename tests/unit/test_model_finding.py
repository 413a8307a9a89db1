"""The finding a model reports comes from its model.json: the SR codes it, the Secondary
Capture and the heatmap note name it, the web shows it. A second finding is a model folder
whose model.json says so; the weights' sha256 (of the weights file) is untouched by it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from cxr_common.clinical import heatmap_note
from cxr_common.model_files import ModelFinding, read_finding, shipped_model_dir
from cxr_model import WEIGHTS_DIR, ContractError, read_contract, verify_weights
from cxr_registry import read_model_folder
from cxr_results import build_structured_report, result_uids
from cxr_results.render import result_text
from tests.conftest import SAMPLES
from tests.results_helpers import UID_ROOT, sr_items, sr_value, summary
from worklist.present import finding_display

PNEUMONIA = ModelFinding("pneumonia", "Pneumonia", "233604007", "SCT", "Pneumonia")
PNEUMOTHORAX = ModelFinding("pneumothorax", "Pneumothorax", "36118008", "SCT", "Pneumothorax")


def _folder_with(tmp_path: Path, finding: object) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(WEIGHTS_DIR, folder)
    data = json.loads((folder / "model.json").read_text())
    data["finding"] = finding
    (folder / "model.json").write_text(json.dumps(data, indent=2))
    return folder


def test_the_shipped_model_reports_pneumonia_and_still_registers() -> None:
    assert shipped_model_dir().resolve() == WEIGHTS_DIR.resolve()
    assert read_finding(WEIGHTS_DIR) == read_contract(WEIGHTS_DIR).finding == PNEUMONIA
    assert finding_display(WEIGHTS_DIR) == "Pneumonia"
    # the finding lives in model.json; the sha256 is the weights file's, so it still holds
    contract = read_contract(WEIGHTS_DIR)
    verify_weights(WEIGHTS_DIR, contract)
    registered = read_model_folder(WEIGHTS_DIR)
    assert (registered.sha256, registered.version) == (contract.sha256, contract.version)
    assert read_contract(WEIGHTS_DIR).to_json()["finding"] == PNEUMONIA.to_json()


def test_a_second_finding_is_configuration(tmp_path: Path) -> None:
    folder = _folder_with(tmp_path, PNEUMOTHORAX.to_json())
    contract = read_contract(folder)
    assert contract.finding == read_finding(folder) == PNEUMOTHORAX
    verify_weights(folder, contract)
    assert finding_display(folder) == "Pneumothorax"

    result = replace(summary(), finding=contract.finding)
    source = pydicom.dcmread(SAMPLES / "rsna-opacity-1.dcm", stop_before_pixels=True)
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    sr = build_structured_report(source, result, uids)
    assert sr_value(sr_items(sr)["Finding"]) == ("36118008", "SCT")
    header, footer = result_text(result)
    assert header[1][0].startswith("Pneumothorax score 0.812")
    assert footer[1][0] == heatmap_note("Pneumothorax")
    assert "Pneumothorax score up" in heatmap_note("Pneumothorax")
    texts = [line for line, _ in header + footer if not line.startswith("Model cxr-pneumonia")]
    assert not any("neumonia" in line for line in texts)  # only the model's name says so


def test_a_missing_or_malformed_finding_is_refused_with_what_to_write(tmp_path: Path) -> None:
    folder = _folder_with(tmp_path, {"name": "x", "display": "X", "code": {"value": "1"}})
    with pytest.raises(ContractError, match='"scheme" and "meaning"'):
        read_contract(folder)
    with pytest.raises(ValueError, match="missing or malformed"):
        read_finding(folder)
    assert finding_display(folder) is None
    data = json.loads((folder / "model.json").read_text())
    del data["finding"]
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="declares no finding"):
        read_finding(folder)
    with pytest.raises(ContractError, match="finding"):
        read_contract(folder)
