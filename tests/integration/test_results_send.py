"""Result objects over real associations: an in-process pynetdicom SCP and DCMTK storescp
receive the Secondary Capture, the heatmap Segmentation and the SR; DCMTK and dciodvfy read
what they stored; a destination that is down or silent gives AssociationError within the
configured timeouts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxr_common.clinical import DISCLAIMER
from cxr_imaging.overlay import heat_from_overlay
from cxr_results import (
    AssociationError,
    Destination,
    Timeouts,
    build_heatmap_segmentation,
    build_secondary_capture,
    build_structured_report,
    result_uids,
    send_objects,
)
from cxr_results.send import MAX_CONTEXTS
from tests.conftest import SAMPLES
from tests.integration.results_peers import (
    DCMTK,
    DICOM3TOOLS,
    Received,
    dciodvfy_errors,
    run_tool,
    running_storescp,
    start_scp,
)
from tests.results_helpers import UID_ROOT, overlay, sr_items, sr_value, summary
from tests.support import free_port

pytestmark = pytest.mark.integration

QUICK = Timeouts(connection_s=5, acse_s=2, dimse_s=10, network_s=10)


@pytest.fixture(scope="module")
def objects() -> tuple[Dataset, Dataset, Dataset, Dataset]:
    """(source, Secondary Capture, SR, heatmap Segmentation) for the committed sample
    rsna-opacity-1.dcm."""
    source = pydicom.dcmread(SAMPLES / "rsna-opacity-1.dcm")
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    stored = overlay(source)
    sc = build_secondary_capture(source, stored, summary(), uids, max_side=512)
    seg = build_heatmap_segmentation(source, heat_from_overlay(stored), summary(), uids)
    sr = build_structured_report(source, summary(), uids, sc, segmentation=seg)
    return source, sc, sr, seg


def _start_scp(received: Received, status_for_sr: int = 0x0000) -> tuple[AE, object, int]:
    return start_scp(received, status_for_sr)


@pytest.fixture
def pynetdicom_scp() -> Iterator[tuple[Destination, Received]]:
    received = Received()
    ae, server, port = _start_scp(received)
    yield Destination("TEST_PACS", "127.0.0.1", port), received
    server.shutdown()  # type: ignore[attr-defined]


def test_a_pynetdicom_scp_receives_every_object(
    pynetdicom_scp: tuple[Destination, Received], objects: tuple[Dataset, Dataset, Dataset, Dataset]
) -> None:
    destination, received = pynetdicom_scp
    source, sc, sr, seg = objects
    outcomes = send_objects(
        destination, [sc, seg, sr], calling_ae_title="CXR_RESULTS", timeouts=QUICK
    )
    assert [(o.sop_instance_uid, o.stored, o.status) for o in outcomes] == [
        (sc.SOPInstanceUID, True, 0),
        (seg.SOPInstanceUID, True, 0),
        (sr.SOPInstanceUID, True, 0),
    ]
    assert received.syntaxes == [ExplicitVRLittleEndian] * 3
    assert received.calling_ae_titles == ["CXR_RESULTS"] * 3
    got_sc, got_seg, got_sr = received.datasets
    assert got_seg.SegmentationType == "FRACTIONAL"
    assert got_seg.pixel_array.shape == (source.Rows, source.Columns)
    for got in (got_sc, got_seg, got_sr):
        assert got.StudyInstanceUID == source.StudyInstanceUID
        assert got.PatientID == source.PatientID
    assert got_sc.BurnedInAnnotation == "YES"
    assert got_sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert got_sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
    items = sr_items(got_sr)
    assert sr_value(items["Comment"]) == DISCLAIMER
    assert sr_value(items["Best illustration of finding"])[1] == got_sc.SOPInstanceUID


@pytest.mark.parametrize(
    ("status", "stored", "said"),
    [
        (0xA700, False, "answered 0xA700"),  # refused: out of resources
        (0xB000, True, "warning 0xB000"),  # the standard's warnings: stored
        (0xB006, True, "warning 0xB006"),
        (0xB007, True, "warning 0xB007"),
    ],
)
def test_each_object_gets_its_status_and_only_success_or_a_warning_is_stored(
    status: int, stored: bool, said: str, objects: tuple[Dataset, Dataset, Dataset, Dataset]
) -> None:
    received = Received()
    ae, server, port = _start_scp(received, status_for_sr=status)
    try:
        _, sc, sr, _ = objects
        outcomes = send_objects(
            Destination("TEST_PACS", "127.0.0.1", port), [sc, sr], timeouts=QUICK
        )
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert [(o.stored, o.status, o.reason) for o in outcomes[:1]] == [(True, 0, None)]
    assert (outcomes[1].stored, outcomes[1].status) == (stored, status)
    assert said in str(outcomes[1].reason)


def test_a_wrong_called_ae_title_is_an_association_error(
    pynetdicom_scp: tuple[Destination, Received], objects: tuple[Dataset, Dataset, Dataset, Dataset]
) -> None:
    destination, received = pynetdicom_scp
    wrong = Destination("NOT_THE_PACS", destination.host, destination.port)
    with pytest.raises(AssociationError, match="rejected") as info:
        send_objects(wrong, list(objects[1:]), timeouts=QUICK)
    assert info.value.destination == str(wrong)
    assert received.datasets == []


def test_a_destination_that_is_down_raises_quickly(
    objects: tuple[Dataset, Dataset, Dataset, Dataset],
) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(AssociationError, match="no answer"):
        send_objects(Destination("PACS", "127.0.0.1", port), list(objects[1:]), timeouts=QUICK)


def test_a_silent_destination_is_bounded_by_the_acse_timeout(
    objects: tuple[Dataset, Dataset, Dataset, Dataset],
) -> None:
    """TCP connects (the kernel's backlog) but no A-ASSOCIATE answer ever comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = int(sock.getsockname()[1])
        with pytest.raises(AssociationError):
            send_objects(
                Destination("PACS", "127.0.0.1", port),
                list(objects[1:]),
                timeouts=Timeouts(connection_s=2, acse_s=1, dimse_s=2, network_s=2),
            )


# ----------------------------------------------------------------------------- DCMTK


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[Destination, Path]]:
    out = tmp_path / "storescp"
    with running_storescp(out) as destination:
        yield destination, out


_run = run_tool


@DCMTK
@DICOM3TOOLS
def test_dcmtk_storescp_receives_every_object_and_dcmtk_and_dciodvfy_read_them(
    storescp: tuple[Destination, Path], objects: tuple[Dataset, Dataset, Dataset, Dataset]
) -> None:
    destination, out = storescp
    source, sc, sr, seg = objects
    outcomes = send_objects(destination, [sc, seg, sr], timeouts=QUICK)
    assert all(o.stored for o in outcomes), outcomes
    stored = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}
    assert set(stored) == {sc.SOPInstanceUID, sr.SOPInstanceUID, seg.SOPInstanceUID}
    for path in stored.values():
        assert dciodvfy_errors(path) == [], path.name

    sr_dump = _run(["dsrdump", str(stored[sr.SOPInstanceUID])])
    assert sr_dump.returncode == 0, sr_dump.stderr
    assert "E:" not in sr_dump.stderr, sr_dump.stderr
    assert "W:" not in sr_dump.stderr, sr_dump.stderr
    assert "Comprehensive 3D SR Document" in sr_dump.stdout
    assert "Imaging Measurement Report" in sr_dump.stdout
    assert '"Triage score")="0.8123"' in sr_dump.stdout
    assert "1.0.0-lite0-strong-e8" in sr_dump.stdout

    sc_dump = _run(
        ["dcmdump", "+P", "StudyInstanceUID", "+P", "PatientID", str(stored[sc.SOPInstanceUID])]
    )
    assert sc_dump.returncode == 0, sc_dump.stderr
    assert f"[{source.StudyInstanceUID}]" in sc_dump.stdout
    assert f"[{source.PatientID}]" in sc_dump.stdout
    assert "E:" not in sc_dump.stderr, sc_dump.stderr


# ----------------------------------------------------------------------------- the client


def test_more_contexts_than_one_association_takes_are_split_over_associations() -> None:
    """130 storage SOP classes need 130 contexts (plus Verification): PS3.8 allows 128 per
    association, so the client opens a second one; every object is stored, in order."""
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts[:130]]
    associations: list[int] = []
    stored: list[str] = []

    def on_store(event: Event) -> int:
        associations.append(id(event.assoc))
        stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    scp = AE(ae_title="TEST_PACS")
    for uid in classes:
        scp.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    scp.add_supported_context(Verification)
    server = scp.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    datasets = []
    for n, uid in enumerate(classes, start=1):
        ds = Dataset()
        ds.SOPClassUID = uid
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1399.999.{n}"
        ds.PatientID = "SPLIT"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        datasets.append(ds)
    try:
        destination = Destination("TEST_PACS", "127.0.0.1", int(server.server_address[1]))
        outcomes = send_objects(destination, datasets, timeouts=QUICK)
    finally:
        server.shutdown()
        scp.shutdown()
    assert [o.stored for o in outcomes] == [True] * 130
    assert stored == [ds.SOPInstanceUID for ds in datasets]
    assert len(set(associations)) == 2
    assert associations.count(associations[0]) == MAX_CONTEXTS - 1
