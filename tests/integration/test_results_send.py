"""Result objects over real associations: an in-process pynetdicom SCP and DCMTK storescp
receive the Secondary Capture and the SR; DCMTK reads what they stored; a destination that
is down or silent gives AssociationError within the configured timeouts."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from cxr_common.clinical import DISCLAIMER
from cxr_results import (
    AssociationError,
    Destination,
    Timeouts,
    build_secondary_capture,
    build_structured_report,
    result_uids,
    send_objects,
)
from tests.conftest import SAMPLES
from tests.results_helpers import UID_ROOT, overlay, sr_items, sr_value, summary

pytestmark = pytest.mark.integration

QUICK = Timeouts(connection_s=5, acse_s=2, dimse_s=10, network_s=10)


@dataclass
class Received:
    datasets: list[Dataset] = field(default_factory=list)
    syntaxes: list[str] = field(default_factory=list)
    calling_ae_titles: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def objects() -> tuple[Dataset, Dataset, Dataset]:
    """(source, Secondary Capture, SR) for the committed sample rsna-opacity-1.dcm."""
    source = pydicom.dcmread(SAMPLES / "rsna-opacity-1.dcm")
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    sc = build_secondary_capture(source, overlay(source), summary(), uids, max_side=512)
    sr = build_structured_report(source, summary(), uids, sc)
    return source, sc, sr


def _start_scp(received: Received, status_for_sr: int = 0x0000) -> tuple[AE, object, int]:
    def on_store(event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.datasets.append(ds)
        received.syntaxes.append(str(event.context.transfer_syntax))
        received.calling_ae_titles.append(event.assoc.requestor.ae_title)
        return status_for_sr if ds.SOPClassUID == ComprehensiveSRStorage else 0x0000

    ae = AE(ae_title="TEST_PACS")
    ae.require_called_aet = True
    for sop_class in (SecondaryCaptureImageStorage, ComprehensiveSRStorage):
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return ae, server, int(server.server_address[1])


@pytest.fixture
def pynetdicom_scp() -> Iterator[tuple[Destination, Received]]:
    received = Received()
    ae, server, port = _start_scp(received)
    yield Destination("TEST_PACS", "127.0.0.1", port), received
    server.shutdown()  # type: ignore[attr-defined]


def test_a_pynetdicom_scp_receives_both_objects(
    pynetdicom_scp: tuple[Destination, Received], objects: tuple[Dataset, Dataset, Dataset]
) -> None:
    destination, received = pynetdicom_scp
    source, sc, sr = objects
    outcomes = send_objects(destination, [sc, sr], calling_ae_title="CXR_RESULTS", timeouts=QUICK)
    assert [(o.sop_instance_uid, o.stored, o.status) for o in outcomes] == [
        (sc.SOPInstanceUID, True, 0),
        (sr.SOPInstanceUID, True, 0),
    ]
    assert received.syntaxes == [ExplicitVRLittleEndian, ExplicitVRLittleEndian]
    assert received.calling_ae_titles == ["CXR_RESULTS", "CXR_RESULTS"]
    got_sc, got_sr = received.datasets
    for got in (got_sc, got_sr):
        assert got.StudyInstanceUID == source.StudyInstanceUID
        assert got.PatientID == source.PatientID
    assert got_sc.BurnedInAnnotation == "YES"
    assert got_sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert got_sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
    items = sr_items(got_sr)
    assert sr_value(items["Comment"]) == DISCLAIMER
    assert sr_value(items["Best illustration of finding"])[1] == got_sc.SOPInstanceUID


def test_a_refused_object_gets_its_status(objects: tuple[Dataset, Dataset, Dataset]) -> None:
    received = Received()
    ae, server, port = _start_scp(received, status_for_sr=0xA700)
    try:
        _, sc, sr = objects
        outcomes = send_objects(
            Destination("TEST_PACS", "127.0.0.1", port), [sc, sr], timeouts=QUICK
        )
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert [o.stored for o in outcomes] == [True, False]
    assert outcomes[1].status == 0xA700
    assert "0xA700" in str(outcomes[1].reason)


def test_a_wrong_called_ae_title_is_an_association_error(
    pynetdicom_scp: tuple[Destination, Received], objects: tuple[Dataset, Dataset, Dataset]
) -> None:
    destination, received = pynetdicom_scp
    wrong = Destination("NOT_THE_PACS", destination.host, destination.port)
    with pytest.raises(AssociationError, match="rejected") as info:
        send_objects(wrong, list(objects[1:]), timeouts=QUICK)
    assert info.value.destination == str(wrong)
    assert received.datasets == []


def test_a_destination_that_is_down_raises_quickly(
    objects: tuple[Dataset, Dataset, Dataset],
) -> None:
    port = _free_port()  # nothing listens there
    with pytest.raises(AssociationError, match="no answer"):
        send_objects(Destination("PACS", "127.0.0.1", port), list(objects[1:]), timeouts=QUICK)


def test_a_silent_destination_is_bounded_by_the_acse_timeout(
    objects: tuple[Dataset, Dataset, Dataset],
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

DCMTK = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("storescp", "dsrdump", "dcmdump")),
    reason="DCMTK's storescp/dsrdump/dcmdump are not on PATH (Debian: apt-get install dcmtk)",
)


def _echo(port: int) -> bool:
    ae = AE(ae_title="CXR_PROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 2
    ae.connection_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    ok = assoc.is_established
    if ok:
        assoc.release()
    ae.shutdown()
    return ok


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[Destination, Path]]:
    out = tmp_path / "storescp"
    out.mkdir()
    port = _free_port()
    proc = subprocess.Popen(
        ["storescp", "--aetitle", "STORESCP", "--output-directory", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not _echo(port):  # ready when it answers a C-ECHO
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        yield Destination("STORESCP", "127.0.0.1", port), out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@DCMTK
def test_dcmtk_storescp_receives_both_and_dcmtk_reads_them(
    storescp: tuple[Destination, Path], objects: tuple[Dataset, Dataset, Dataset]
) -> None:
    destination, out = storescp
    source, sc, sr = objects
    outcomes = send_objects(destination, [sc, sr], timeouts=QUICK)
    assert all(o.stored for o in outcomes), outcomes
    stored = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}
    assert set(stored) == {sc.SOPInstanceUID, sr.SOPInstanceUID}

    sr_dump = _run(["dsrdump", str(stored[sr.SOPInstanceUID])])
    assert sr_dump.returncode == 0, sr_dump.stderr
    assert "E:" not in sr_dump.stderr, sr_dump.stderr
    assert "W:" not in sr_dump.stderr, sr_dump.stderr
    assert "Comprehensive SR Document" in sr_dump.stdout
    assert '"Triage score")="0.8123"' in sr_dump.stdout
    assert "1.0.0-lite0-strong-e8" in sr_dump.stdout

    sc_dump = _run(
        ["dcmdump", "+P", "StudyInstanceUID", "+P", "PatientID", str(stored[sc.SOPInstanceUID])]
    )
    assert sc_dump.returncode == 0, sc_dump.stderr
    assert f"[{source.StudyInstanceUID}]" in sc_dump.stdout
    assert f"[{source.PatientID}]" in sc_dump.stdout
    assert "E:" not in sc_dump.stderr, sc_dump.stderr
