"""``cxr-triage send``: C-STORE files and folders to a listener.

The C-STORE client is :func:`cxr_results.send.store` (the one client: contexts, success
rule, associations): each file is sent as stored (its own transfer syntax, never
transcoded), many files per association. Files that are not DICOM are reported as
skipped, not crashed on.
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
from tqdm import tqdm

from cxr_results.destinations import Destination
from cxr_results.errors import AssociationError
from cxr_results.send import StoreItem, StoreOutcome, store

logger = logging.getLogger(__name__)


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


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and every file under folders named (recursively, sorted)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _inspect(path: Path) -> StoreItem | FileResult:
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
    return StoreItem(path, str(sop_class), str(sop_instance), str(syntax))


def _file_result(path: Path, outcome: StoreOutcome) -> FileResult:
    return FileResult(
        path,
        "sent" if outcome.stored else "failed",
        outcome.status,
        outcome.reason,
        outcome.sop_instance_uid,
    )


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
    items: list[StoreItem] = []
    files: list[Path] = []
    for path in iter_files(Path(p) for p in paths):
        inspected = _inspect(path)
        if isinstance(inspected, FileResult):
            logger.info("skipping %s: %s", path, inspected.reason)
            report.add(inspected)
        else:
            items.append(inspected)
            files.append(path)
    if not items:
        return report
    bar = tqdm(total=len(items), unit="file", desc=desc, disable=not progress)
    try:
        outcomes = store(
            Destination(called_ae, host, port),
            items,
            calling_ae_title=calling_ae,
            peer="the listener",
            on_outcome=lambda _: bar.update(1),
        )
    except AssociationError as exc:
        outcomes = [
            StoreOutcome(i.sop_class_uid, i.sop_instance_uid, False, None, exc.reason)
            for i in items
        ]
    finally:
        bar.close()
    for path, outcome in zip(files, outcomes, strict=True):
        report.add(_file_result(path, outcome))
    return report


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
