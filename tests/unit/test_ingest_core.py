"""The ingest core without a transport: each refusal code, our own objects, the content
hash computed while a file is written, and one header parse per file.

No pynetdicom here (the core imports none): files are written by pydicom and handed to
:func:`cxr_ingest.ingest` as a staged path or as bytes. Refusals decided before the
database need none; the engine points at a closed port, so the one that reaches it is a
real connection failure (DATABASE_UNAVAILABLE). Stored, duplicate and conflict outcomes
need Postgres and Redis: ``tests/integration/test_ingest.py``.
"""

from __future__ import annotations

import io
import random
import socket
import sys
from pathlib import Path

import pytest
from celery import Celery
from pydicom.uid import (
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from sqlalchemy import Engine, create_engine

from cxr_common.storage import FileStorage
from cxr_imaging.limits import DecodeLimits
from cxr_ingest import (
    ContentHasher,
    Disposition,
    Ingest,
    Outcome,
    Received,
    RefusalCode,
    Source,
    Transport,
    content_sha256,
    ingest,
    parse_count,
)
from cxr_ingest.content import meta_transfer_syntax
from tests import poison
from tests.conftest import SAMPLES
from tests.dicom_factory import make_dataset, write

ROOT = "1.2.826.0.1.3680043.10.999"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unreachable_engine() -> Engine:
    """An engine on a port nobody listens on: every connection is refused."""
    return create_engine(
        f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/none",
        connect_args={"connect_timeout": 2},
    )


def _rules(
    tmp_path: Path, engine: Engine, *, limits: DecodeLimits | None = None, root: str | None = ROOT
) -> Ingest:
    return Ingest(
        engine,
        FileStorage(tmp_path / "storage"),
        Celery(broker="memory://"),
        "unused",
        limits=limits or DecodeLimits(),
        uid_root=root,
    )


def _dicom(ds_path: Path, *, announce: bool = True) -> Source:
    """The source a C-STORE of the file at ``ds_path`` would describe."""
    from pydicom import dcmread

    ds = dcmread(ds_path, stop_before_pixels=True)
    return Source(
        Transport.DICOM,
        identity="MODALITY",
        peer_address="192.0.2.7",
        announced_sop_class_uid=str(ds.SOPClassUID) if announce else None,
        announced_sop_instance_uid=str(ds.SOPInstanceUID) if announce else None,
    )


def _staging_is_empty(rules: Ingest) -> bool:
    return not any(rules.storage.staging_dir().iterdir())


def _run(rules: Ingest, path: Path, source: Source) -> Outcome:
    """Ingest a copy of ``path`` placed in staging, as a listener would hand it over."""
    staged = rules.storage.staging_dir() / "recv-test.dcm"
    staged.write_bytes(path.read_bytes())
    outcome = ingest(rules, Received(path=staged), source)
    assert not staged.exists()  # taken over: placed or removed, never left behind
    assert _staging_is_empty(rules)
    return outcome


def _refusal(outcome: Outcome) -> RefusalCode | None:
    assert outcome.disposition is Disposition.REFUSED or outcome.refusal is None
    return outcome.refusal


def test_an_announced_class_we_do_not_store_is_refused_unread(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    path = write(make_dataset(sop_class=MRImageStorage, modality="MR"), tmp_path / "mr.dcm")
    before = parse_count()
    outcome = _run(rules, path, _dicom(path))
    assert _refusal(outcome) is RefusalCode.SOP_CLASS_NOT_STORED
    assert outcome.comment == "SOP Class not stored by this listener"
    assert parse_count() == before  # decided from the request alone


def test_a_class_we_do_not_store_is_refused_from_the_header_when_nothing_is_announced(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    path = write(make_dataset(sop_class=MRImageStorage, modality="MR"), tmp_path / "mr.dcm")
    outcome = ingest(rules, Received(data=path.read_bytes()), Source(Transport.STOW, "client"))
    assert _refusal(outcome) is RefusalCode.SOP_CLASS_NOT_STORED
    assert _staging_is_empty(rules)


def test_an_sr_that_is_not_ours_is_refused_as_a_class_we_do_not_store(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    ds = make_dataset(sop_class=ComprehensiveSRStorage, modality="SR")
    del ds.PixelData  # an SR has none: no limit refuses it before the class does
    path = write(ds, tmp_path / "sr.dcm")
    assert _refusal(_run(rules, path, _dicom(path))) is RefusalCode.SOP_CLASS_NOT_STORED


def test_an_sr_that_is_not_ours_sent_without_an_announcement_is_refused_by_its_class(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    ds = make_dataset(sop_class=ComprehensiveSRStorage, modality="SR")
    del ds.PixelData  # no limit check runs on a class we do not store
    path = write(ds, tmp_path / "sr.dcm")
    outcome = ingest(rules, Received(data=path.read_bytes()), Source(Transport.STOW, "client"))
    assert _refusal(outcome) is RefusalCode.SOP_CLASS_NOT_STORED
    assert outcome.reason == f"SOP class {ComprehensiveSRStorage} not stored"


def test_our_own_object_is_acknowledged_by_its_announced_uid_without_a_read(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    ds = make_dataset(
        sop_class=SecondaryCaptureImageStorage, sop_uid=generate_uid(prefix=ROOT + ".")
    )
    path = write(ds, tmp_path / "ours.dcm")
    before = parse_count()
    outcome = _run(rules, path, _dicom(path))
    assert outcome.disposition is Disposition.OWN_OBJECT
    assert outcome.success
    assert outcome.instance_id is None
    assert parse_count() == before


@pytest.mark.parametrize("announce", [True, False], ids=["c-store", "stow"])
def test_an_image_under_our_uid_root_but_of_a_class_we_never_create_is_not_ours(
    tmp_path: Path, unreachable_engine: Engine, announce: bool
) -> None:
    """The loop guard recognises our objects by UID root *and* SOP class: a CR whose UIDs
    happen to (or are made to) lie under our root is ingested like any image (here it
    reaches the database, which is down), never acknowledged and dropped."""
    rules = _rules(tmp_path, unreachable_engine)
    ds = make_dataset(sop_uid=generate_uid(prefix=ROOT + "."))
    ds.SeriesInstanceUID = generate_uid(prefix=ROOT + ".")
    path = write(ds, tmp_path / "cr-under-our-root.dcm")
    outcome = _run(rules, path, _dicom(path, announce=announce))
    assert _refusal(outcome) is RefusalCode.DATABASE_UNAVAILABLE


@pytest.mark.parametrize("announce", [True, False], ids=["c-store", "stow"])
def test_an_image_with_our_marker_but_not_our_uid_root_is_refused_not_acknowledged(
    tmp_path: Path, unreachable_engine: Engine, announce: bool
) -> None:
    """Manufacturer and SeriesDescription "cxr-triage" used to be enough to be silently
    dropped with a success status (issue 20): now a failure status says why."""
    rules = _rules(tmp_path, unreachable_engine)
    for sop_class in (SecondaryCaptureImageStorage, ComputedRadiographyImageStorage):
        ds = make_dataset(sop_class=sop_class)
        ds.Manufacturer = "cxr-triage"
        ds.SeriesDescription = "cxr-triage heatmap cxr-pneumonia 1.0.0"
        path = write(ds, tmp_path / "spoof.dcm")
        outcome = _run(rules, path, _dicom(path, announce=announce))
        assert _refusal(outcome) is RefusalCode.FOREIGN_RESULT_OBJECT
        assert not outcome.success
        assert outcome.comment == "cxr-triage result marker without our UID root: not stored"


def test_our_own_sr_is_recognised_from_its_header_in_the_one_parse(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    ds = make_dataset(sop_class=ComprehensiveSRStorage, modality="SR")
    ds.SeriesInstanceUID = generate_uid(prefix=ROOT + ".")  # a PACS kept our series UID
    del ds.PixelData
    path = write(ds, tmp_path / "our-sr.dcm")
    before = parse_count()
    outcome = _run(rules, path, _dicom(path))
    assert outcome.disposition is Disposition.OWN_OBJECT
    assert parse_count() == before + 1


def test_data_set_uids_that_differ_from_the_request_are_refused(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    path = write(make_dataset(), tmp_path / "cr.dcm")
    source = _dicom(path)
    other_instance = Source(
        Transport.DICOM,
        "MODALITY",
        announced_sop_class_uid=source.announced_sop_class_uid,
        announced_sop_instance_uid=generate_uid(),
    )
    outcome = _run(rules, path, other_instance)
    assert _refusal(outcome) is RefusalCode.SOP_INSTANCE_MISMATCH
    assert outcome.comment == "SOP Instance UID differs from the C-STORE request's"
    dx = Source(
        Transport.DICOM,
        "MODALITY",
        announced_sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",  # DX, a class we store
        announced_sop_instance_uid=source.announced_sop_instance_uid,
    )
    assert _refusal(_run(rules, path, dx)) is RefusalCode.SOP_CLASS_MISMATCH


def test_missing_and_invalid_uids_are_refused(tmp_path: Path, unreachable_engine: Engine) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    ds = make_dataset()
    del ds.StudyInstanceUID
    missing = write(ds, tmp_path / "missing.dcm")
    outcome = _run(rules, missing, _dicom(missing))
    assert _refusal(outcome) is RefusalCode.MISSING_UID
    ds = make_dataset()
    ds.StudyInstanceUID = "1.2.3/../../etc"
    invalid = write(ds, tmp_path / "invalid.dcm")
    assert _refusal(_run(rules, invalid, _dicom(invalid))) is RefusalCode.INVALID_UID


def test_bytes_that_are_not_dicom_are_refused_as_undecodable(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    outcome = ingest(rules, Received(data=b"\0" * 128 + b"NOPE" * 100), Source(Transport.STOW))
    assert _refusal(outcome) is RefusalCode.UNDECODABLE
    assert outcome.comment == "data set cannot be decoded: resend"
    assert _staging_is_empty(rules)


@pytest.mark.parametrize(
    ("make", "limits", "code"),
    [
        (lambda p: poison.truncated_pixel_data(p), None, RefusalCode.PIXEL_DATA_LENGTH),
        (lambda p: poison.zero_length_pixel_data(p), None, RefusalCode.PIXEL_DATA_LENGTH),
        (lambda p: poison.absurd_dimensions(p, Rows=0), None, RefusalCode.DECLARED_SIZE),
        (
            lambda p: write(make_dataset(), p),
            DecodeLimits(max_rows=100),
            RefusalCode.DECLARED_SIZE,
        ),
        (
            lambda p: poison.deflated_dx(p, rows=256, columns=256),
            DecodeLimits(max_inflated_bytes=10_000),
            RefusalCode.INFLATED_SIZE,
        ),
        (
            lambda p: write(make_dataset(), p),
            DecodeLimits(max_header_bytes=64),
            RefusalCode.HEADER_SIZE,
        ),
    ],
    ids=["truncated", "zero-length", "zero-rows", "over-max-rows", "inflated", "header"],
)
def test_each_limit_refusal_has_its_code_and_a_short_comment(
    tmp_path: Path,
    unreachable_engine: Engine,
    make: object,
    limits: DecodeLimits | None,
    code: RefusalCode,
) -> None:
    rules = _rules(tmp_path, unreachable_engine, limits=limits)
    path = make(tmp_path / "poison.dcm")  # type: ignore[operator]
    before = parse_count()
    outcome = _run(rules, path, _dicom(path))
    assert _refusal(outcome) is code
    assert outcome.comment
    assert len(outcome.comment) <= 64
    assert parse_count() == before + 1


def test_an_unwritable_staging_folder_refuses_with_storage_unavailable(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    blocker = tmp_path / "storage"
    blocker.write_text("a file where the storage folder should be")
    rules = _rules(tmp_path, unreachable_engine)
    path = write(make_dataset(), tmp_path / "cr.dcm")
    outcome = ingest(rules, Received(data=path.read_bytes()), _dicom(path))
    assert _refusal(outcome) is RefusalCode.STORAGE_UNAVAILABLE
    assert outcome.refusal is not None
    assert outcome.refusal.retryable


def test_a_database_that_cannot_be_reached_refuses_and_leaves_no_file(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = _rules(tmp_path, unreachable_engine)
    path = write(make_dataset(), tmp_path / "cr.dcm")
    outcome = _run(rules, path, _dicom(path))
    assert _refusal(outcome) is RefusalCode.DATABASE_UNAVAILABLE
    assert outcome.comment == "database unavailable: retry later"
    assert not list((tmp_path / "storage").rglob("*.dcm"))


class _BrokenStorage(FileStorage):
    """A storage whose URIs cannot be built: an error ingest did not foresee."""

    def uri(self, key: str) -> str:
        raise RuntimeError("unforeseen")


def test_an_unforeseen_error_is_an_internal_error_outcome_not_an_exception(
    tmp_path: Path, unreachable_engine: Engine
) -> None:
    rules = Ingest(
        unreachable_engine, _BrokenStorage(tmp_path / "storage"), Celery(broker="memory://"), "q"
    )
    path = write(make_dataset(), tmp_path / "cr.dcm")
    outcome = _run(rules, path, _dicom(path))
    assert _refusal(outcome) is RefusalCode.INTERNAL_ERROR
    assert outcome.reason == "listener error (RuntimeError)"


def test_the_calling_ae_title_is_kept_for_dicom_only_and_cleaned() -> None:
    assert Source(Transport.DICOM, " MOD\x00ALITY-WITH-A-LONG-NAME ").calling_ae_title == (
        "MODALITY-WITH-A-"
    )
    assert Source(Transport.STOW, "alice").calling_ae_title is None


# --- the content hash while written ---------------------------------------------------------


def _samples() -> list[Path]:
    return sorted(SAMPLES.rglob("*.dcm"))[:6]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_the_hash_while_written_equals_the_hash_of_the_file(tmp_path: Path, syntax: str) -> None:
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    path = write(ds, tmp_path / "x.dcm")
    data = path.read_bytes()
    rng = random.Random(7)
    hasher = ContentHasher()
    pos = 0
    while pos < len(data):  # pieces of every size, as P-DATA fragments arrive
        step = rng.choice([1, 3, 100, 4096, 70_000])
        hasher.update(data[pos : pos + step])
        pos += step
    digest = hasher.digest()
    assert digest is not None
    assert digest.transfer_syntax_uid == syntax
    assert digest.sha256 == content_sha256(path, syntax)


def test_the_hash_while_written_agrees_on_the_committed_samples() -> None:
    from pydicom import dcmread

    samples = _samples()
    assert samples
    for path in samples:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        hasher = ContentHasher()
        hasher.update(path.read_bytes())
        digest = hasher.digest()
        assert digest is not None, path.name
        assert (digest.transfer_syntax_uid, digest.sha256) == (
            syntax,
            content_sha256(path, syntax),
        ), path.name


def test_a_stream_without_file_meta_has_no_digest_while_written() -> None:
    hasher = ContentHasher()
    hasher.update(b"\0" * 128 + b"NOPE" + b"\0" * 200)
    assert hasher.digest() is None
    assert meta_transfer_syntax(b"") is None


def test_the_content_hash_ignores_the_file_meta_but_not_the_transfer_syntax(
    tmp_path: Path,
) -> None:
    ds = make_dataset()
    a = write(ds, tmp_path / "a.dcm")
    ds.file_meta.ImplementationVersionName = "OTHER_WRITER"
    b = write(ds, tmp_path / "b.dcm")
    assert a.read_bytes() != b.read_bytes()
    assert content_sha256(a, ExplicitVRLittleEndian) == content_sha256(b, ExplicitVRLittleEndian)
    assert content_sha256(io.BytesIO(a.read_bytes()), "1.2.3") != content_sha256(
        a, ExplicitVRLittleEndian
    )


def test_the_core_imports_no_transport() -> None:
    """Belt and braces next to the import contract: importing the core in a fresh
    interpreter loads no pynetdicom module of its own accord."""
    import subprocess

    code = (
        "import sys, cxr_ingest.core, cxr_ingest.outcome, cxr_ingest.header; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'torch', 'worker', 'cxr_model')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
