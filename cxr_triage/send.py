"""``cxr-triage send``: a C-STORE client (SCU) for files and folders.

One association is reused for many files; each file's SOP class is proposed with its own
transfer syntax (compressed data is sent as is, never transcoded) and with explicit and
implicit little endian. Files that are not DICOM are reported as skipped, not crashed on.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from tqdm import tqdm

from dicom_listener.statuses import is_success

logger = logging.getLogger(__name__)

#: Most presentation contexts one association may propose (PS3.8: odd IDs 1..255), less
#: the Verification context every association also proposes: it keeps the association up
#: when the listener accepts none of the storage contexts, so each file gets its reason.
MAX_CONTEXTS = 127
_UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))


@dataclass(frozen=True)
class FileResult:
    """What happened to one file: ``outcome`` is ``sent``, ``failed`` or ``skipped``."""

    path: Path
    outcome: str
    status: int | None = None
    reason: str | None = None
    sop_instance_uid: str | None = None


@dataclass
class SendReport:
    """Counts and per-file results of one ``send_paths`` call."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    results: list[FileResult] = field(default_factory=list)

    def add(self, result: FileResult) -> None:
        self.results.append(result)
        if result.outcome == "sent":
            self.sent += 1
        elif result.outcome == "failed":
            self.failed += 1
        else:
            self.skipped += 1

    @property
    def ok(self) -> bool:
        """True when nothing failed and at least one file was sent."""
        return self.failed == 0 and self.sent > 0


@dataclass(frozen=True)
class _Item:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and every file under folders named (recursively, sorted)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _inspect(path: Path) -> _Item | FileResult:
    """Read the header of one file, or explain why it is skipped."""
    if not path.exists():
        return FileResult(path, "skipped", reason="file does not exist")
    try:
        ds = dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        sop_instance = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")
        syntax = meta.get("TransferSyntaxUID")
    except InvalidDicomError:
        return FileResult(path, "skipped", reason="not a DICOM file (no DICM preamble)")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad files
        return FileResult(path, "skipped", reason=f"unreadable DICOM ({type(exc).__name__})")
    if not sop_class or not sop_instance:
        return FileResult(path, "skipped", reason="no SOP Class/Instance UID")
    if not syntax:
        return FileResult(path, "skipped", reason="no Transfer Syntax UID in the File Meta")
    return _Item(path, str(sop_class), str(sop_instance), str(syntax))


def _contexts_for(items: Sequence[_Item]) -> list[tuple[str, tuple[str, ...]]]:
    """(SOP class, transfer syntaxes) pairs to propose for ``items``.

    Each file's own syntax gets a context of its own so that it is sent exactly as stored
    (pynetdicom never transcodes compressed pixel data), and each SOP class also gets an
    explicit + implicit little endian context as the fallback for uncompressed files."""
    pairs: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in items:
        pairs[(item.sop_class_uid, (item.transfer_syntax_uid,))] = None
        pairs[(item.sop_class_uid, _UNCOMPRESSED)] = None
    return list(pairs)


def _batches(items: Sequence[_Item]) -> list[list[_Item]]:
    """Split items so that no association proposes more than MAX_CONTEXTS contexts."""
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    for item in items:
        if current and len(_contexts_for([*current, item])) > MAX_CONTEXTS:
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


def _associate(
    host: str, port: int, called_ae: str, calling_ae: str, items: Sequence[_Item]
) -> Association:
    ae = AE(ae_title=calling_ae)
    contexts: list[PresentationContext] = [
        build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in _contexts_for(items)
    ]
    contexts.append(build_context(Verification))
    return ae.associate(host, port, contexts=contexts, ae_title=called_ae)


def _describe_failed_association(assoc: Association) -> str:
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        if rsp is not None and rsp.reason_str:
            return f"association rejected: {rsp.reason_str}"
        return "association rejected"
    if assoc.acceptor.primitive is None:  # no A-ASSOCIATE answer at all
        return "could not connect (is the listener running on that host and port?)"
    return "association aborted (no presentation context accepted?)"


def _send_one(assoc: Association, item: _Item) -> FileResult:
    try:
        rsp = assoc.send_c_store(item.path)
    except ValueError as exc:
        # No accepted presentation context for this SOP class / transfer syntax.
        return FileResult(
            item.path,
            "failed",
            reason=f"not accepted by the listener: {exc}".splitlines()[0][:300],
            sop_instance_uid=item.sop_instance_uid,
        )
    except Exception as exc:  # noqa: BLE001 - report the file, keep going
        return FileResult(
            item.path,
            "failed",
            reason=f"cannot send ({type(exc).__name__}: {exc})"[:300],
            sop_instance_uid=item.sop_instance_uid,
        )
    status = rsp.get("Status") if rsp else None  # the value, or None when no response
    if status is None:
        return FileResult(
            item.path,
            "failed",
            reason="no response (connection lost, timed out or aborted)",
            sop_instance_uid=item.sop_instance_uid,
        )
    code = int(status)
    if is_success(code):
        return FileResult(item.path, "sent", code, None, item.sop_instance_uid)
    comment = rsp.get("ErrorComment")
    reason = f"listener answered 0x{code:04X}" + (f": {comment}" if comment else "")
    return FileResult(item.path, "failed", code, reason, item.sop_instance_uid)


def send_paths(
    paths: Sequence[Path],
    host: str,
    port: int,
    called_ae: str = "CXR_TRIAGE",
    calling_ae: str = "CXR_SEND",
    progress: bool = True,
    desc: str = "C-STORE",
) -> SendReport:
    """C-STORE every DICOM file in ``paths`` (files and folders) to ``host:port``;
    ``desc`` labels the progress bar."""
    report = SendReport()
    items: list[_Item] = []
    for path in iter_files(Path(p) for p in paths):
        inspected = _inspect(path)
        if isinstance(inspected, FileResult):
            logger.info("skipping %s: %s", path, inspected.reason)
            report.add(inspected)
        else:
            items.append(inspected)
    bar = tqdm(total=len(items), unit="file", desc=desc, disable=not progress)
    try:
        for batch in _batches(items):
            _send_batch(batch, host, port, called_ae, calling_ae, report, bar)
    finally:
        bar.close()
    return report


def _send_batch(
    batch: Sequence[_Item],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    report: SendReport,
    bar: tqdm,
) -> None:
    remaining = list(batch)
    reconnects = 0
    while remaining:
        assoc = _associate(host, port, called_ae, calling_ae, remaining)
        if not assoc.is_established:
            why = _describe_failed_association(assoc)
            for item in remaining:
                report.add(FileResult(item.path, "failed", None, why, item.sop_instance_uid))
                bar.update(1)
            return
        try:
            while remaining and assoc.is_established:
                item = remaining.pop(0)
                result = _send_one(assoc, item)
                report.add(result)
                bar.update(1)
        finally:
            if assoc.is_established:
                assoc.release()
        if remaining:
            # The association ended under us: try once more with a fresh one.
            reconnects += 1
            if reconnects > 1:
                for item in remaining:
                    report.add(
                        FileResult(
                            item.path,
                            "failed",
                            None,
                            "association lost twice",
                            item.sop_instance_uid,
                        )
                    )
                    bar.update(1)
                return


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cxr-triage send``."""
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="DICOM files and/or folders (searched recursively); non-DICOM files are skipped",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="listener host name or IP (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=11112, help="listener DICOM port (default: %(default)s)"
    )
    parser.add_argument(
        "--ae-title",
        default="CXR_TRIAGE",
        help="called AE title, the listener's (default: %(default)s)",
    )
    parser.add_argument(
        "--calling-ae",
        default="CXR_SEND",
        help="our calling AE title; must be on the listener's allow-list if it has one "
        "(default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_send(args: argparse.Namespace) -> int:
    """Run ``cxr-triage send``: 0 only if every DICOM file found was stored."""
    report = send_paths(
        args.paths,
        args.host,
        args.port,
        called_ae=args.ae_title,
        calling_ae=args.calling_ae,
        progress=not getattr(args, "no_progress", False),
    )
    for result in report.results:
        if result.outcome != "sent":
            sys.stderr.write(f"{result.outcome}: {result.path}: {result.reason}\n")
    sys.stdout.write(f"sent {report.sent}, failed {report.failed}, skipped {report.skipped}\n")
    if report.failed:
        sys.stderr.write(
            f"error: {report.failed} file(s) were not stored by {args.host}:{args.port}\n"
        )
        return 1
    if report.sent == 0:
        sys.stderr.write("error: no DICOM files found to send\n")
        return 2
    return 0
