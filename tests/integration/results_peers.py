"""Real DICOM peers for the results tests: an in-process pynetdicom SCP and DCMTK storescp
on loopback, both started on free ports and stopped afterwards."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from cxr_results import Destination
from tests.peers import requires_peer
from tests.support import free_port, running, wait_until

DCMTK = requires_peer("dcmtk")
DICOM3TOOLS = requires_peer("dicom3tools")
SR_CLASSES = (Comprehensive3DSRStorage, ComprehensiveSRStorage)


@dataclass
class Received:
    """What a pynetdicom SCP received, in order (thread-safe appends)."""

    datasets: list[Dataset] = field(default_factory=list)
    syntaxes: list[str] = field(default_factory=list)
    calling_ae_titles: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sop_instance_uids(self) -> list[str]:
        with self.lock:
            return [str(ds.SOPInstanceUID) for ds in self.datasets]


def start_scp(
    received: Received, status_for_sr: int = 0x0000, port: int = 0, ae_title: str = "TEST_PACS"
) -> tuple[AE, object, int]:
    """A pynetdicom Storage SCP for the result objects (SC, Segmentation, Comprehensive
    3D SR and, for older results, Comprehensive SR); (ae, server, port). Every SR is
    answered ``status_for_sr``."""

    def on_store(event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with received.lock:
            received.datasets.append(ds)
            received.syntaxes.append(str(event.context.transfer_syntax))
            received.calling_ae_titles.append(event.assoc.requestor.ae_title)
        return status_for_sr if ds.SOPClassUID in SR_CLASSES else 0x0000

    ae = AE(ae_title=ae_title)
    ae.require_called_aet = True
    for sop_class in (SecondaryCaptureImageStorage, SegmentationStorage, *SR_CLASSES):
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return ae, server, int(server.server_address[1])


def _echo(port: int, ae_title: str) -> bool:
    ae = AE(ae_title="CXR_PROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 2
    ae.connection_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    ok = assoc.is_established
    if ok:
        assoc.release()
    ae.shutdown()
    return ok


@contextmanager
def running_storescp(out: Path, ae_title: str = "STORESCP") -> Iterator[Destination]:
    """DCMTK storescp writing what it receives into ``out``; ready when it answers C-ECHO."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "--aetitle", ae_title, "--output-directory", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: _echo(port, ae_title), 30, "storescp answering C-ECHO", alive=running([proc])
        )
        yield Destination(ae_title, "127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


def run_tool(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for ``path`` (warnings are not errors)."""
    done = run_tool(["dciodvfy", str(path)])
    return [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]
