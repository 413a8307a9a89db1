"""Issue 21: the image decides too. An adult chest film with no age in its header (so the
header check says only ``unknown``, which triages by default) goes through a real listener
and worker and is stored as a shadow score, outside by image, with the image reason; a
paediatric film with an age in range stays in scope, checked by both header and image."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Engine, text

from cxr_common.population import IMAGE_REASON, INVERTED_ACTION, INVERTED_REASON
from cxr_db.worklist import reads as reads
from cxr_triage.send import send_paths
from tests.conftest import SAMPLES
from tests.integration.conftest import wait_until_final

pytestmark = pytest.mark.integration

Worker = Callable[..., subprocess.Popen[bytes]]


def _copy(src: Path, tmp: Path, name: str, *, age: str | None) -> Path:
    """A sample as its own study; ``age=None`` removes every element an age comes from."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = name
    for keyword in ("PatientAge", "PatientBirthDate"):
        if keyword in ds:
            delattr(ds, keyword)
    if age is not None:
        ds.PatientAge = age
    path = tmp / f"{name}.dcm"
    ds.save_as(path)
    return path


def _rows(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT s.accession_number AS acc, p.triage, p.flagged, p.probability, "
                "i.population, i.population_reason, i.population_check, i.image_distance "
                "FROM predictions p JOIN instances i ON i.id = p.instance_id "
                "JOIN studies s ON s.id = i.study_id"
            )
        ).mappings()
        return {str(r["acc"]): dict(r) for r in rows}


#: Every adult chest film among the samples (see cxr_triage/samples/README.md for sources
#: and licences); headers give 54, 81, 62 and 64 years, and the copies sent carry no age.
#: rsna-normal-1 is the film the pooled features alone let through (issue 21).
ADULT_FILMS = {
    "ADULT-RSNA": "rsna-normal-1.dcm",
    "ADULT-NIH": "nih-nofinding-1.dcm",
    "ADULT-SIIM": "siim-chest-1.dcm",
    "ADULT-RG1": "rg1-j2k-monochrome1-16bit.dcm",
}


@pytest.mark.parametrize("policy", ["enforce", "off"])
def test_adult_films_without_age_are_outside_by_image_and_scored_in_shadow(
    engine: Engine, listener: int, start_worker: Worker, tmp_path: Path, policy: str
) -> None:
    adults = [_copy(SAMPLES / f, tmp_path, acc, age=None) for acc, f in ADULT_FILMS.items()]
    for path in adults:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert "PatientAge" not in header
        assert "PatientBirthDate" not in header
    child = _copy(SAMPLES / "derived/kermany-normal-1.dcm", tmp_path, "CHILD", age="003Y")
    report = send_paths([*adults, child], "127.0.0.1", listener, progress=False)
    assert (report.sent, report.failed) == (5, 0)
    start_worker(batch_size=5, wait_ms=200, extra_env={"CXR_POPULATION_POLICY": policy})
    wait_until_final(engine, 5)

    rows = _rows(engine)
    inside = rows["CHILD"]
    assert (inside["population"], inside["population_check"]) == ("in_scope", "both")
    assert isinstance(inside["image_distance"], float)
    assert inside["triage"] is True
    wl = {e.accession_number: e for e in reads.worklist(engine)}
    for acc in ADULT_FILMS:
        out = rows[acc]
        assert (out["population"], out["population_check"]) == ("outside", "image"), acc
        reason = str(out["population_reason"])
        assert reason.startswith(IMAGE_REASON), acc
        assert "feature distance" in reason, acc
        assert "age unknown" in reason, acc
        assert isinstance(out["image_distance"], float)
        assert inside["image_distance"] < out["image_distance"], acc
        if policy == "enforce":
            # shadow: stored and shown, never triages (no study score, never flagged)
            assert (out["triage"], out["flagged"]) == (False, False), acc
            assert wl[acc].score is None, acc
            assert wl[acc].shadow_score == pytest.approx(out["probability"])
        else:
            # the site turned the check off: the score triages, the reason still warns
            assert out["triage"] is True, acc
            assert "CXR_POPULATION_POLICY=off" in reason, acc
            assert wl[acc].score == pytest.approx(out["probability"])
        assert wl[acc].population == "outside", acc
        assert IMAGE_REASON in str(wl[acc].population_reason), acc


def test_an_inverted_child_film_is_outside_by_image_and_the_reason_says_what_to_do(
    engine: Engine, listener: int, start_worker: Worker, tmp_path: Path
) -> None:
    # a site_fold=dev Kermany film of a 3-year-old (header in range), its greyscale inverted
    # while it still says MONOCHROME2: what a MONOCHROME1 film exported the wrong way looks like
    inverted = _copy(SAMPLES / "derived/kermany-normal-2.dcm", tmp_path, "INVERTED", age="003Y")
    ds = pydicom.dcmread(inverted)
    assert (ds.PhotometricInterpretation, ds.BitsStored) == ("MONOCHROME2", 8)
    ds.PixelData = (255 - ds.pixel_array).astype("uint8").tobytes()
    ds.save_as(inverted)
    as_sent = _copy(SAMPLES / "derived/kermany-normal-2.dcm", tmp_path, "AS-SENT", age="003Y")
    report = send_paths([inverted, as_sent], "127.0.0.1", listener, progress=False)
    assert (report.sent, report.failed) == (2, 0)
    start_worker(batch_size=2, wait_ms=200)
    wait_until_final(engine, 2)

    rows = _rows(engine)
    out, inside = rows["INVERTED"], rows["AS-SENT"]
    assert (out["population"], out["population_check"]) == ("outside", "image")
    assert (out["triage"], out["flagged"]) == (False, False)
    reason = str(out["population_reason"])
    assert reason.startswith(IMAGE_REASON)
    assert INVERTED_REASON in reason
    assert INVERTED_ACTION in reason
    assert (inside["population"], inside["population_check"]) == ("in_scope", "both")
    assert INVERTED_REASON not in str(inside["population_reason"])
