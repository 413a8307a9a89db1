"""The ``cxr-triage`` command: one entry point for every process and tool.

Clinical decision support, not diagnosis: every output says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from cxr_common.errors import CxrTriageError
from cxr_common.logs import configure_logging
from cxr_common.settings import CommonSettings, ListenerSettings, WebSettings, WorkerSettings

log = logging.getLogger("cxr_triage")

DESCRIPTION = """\
cxr-triage: batch screening of chest radiographs for likely pneumonia.
DICOM in (C-STORE listener), batched CNN scoring with Grad-CAM heatmaps in workers,
a triaged worklist with likely positives first. Clinical decision support, not a
diagnosis: a radiologist reads every study.

Services: set CXR_DATABASE_URL (Postgres) and CXR_BROKER_URL (Redis). When they are
unset, an embedded Postgres and Redis start in CXR_DATA_DIR (default
~/.local/share/cxr-triage), so every command works on a fresh machine.
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from cxr_triage.demo import run_demo

    data_dir = args.data_dir or (CommonSettings().data_dir / "demo")
    return run_demo(Path(data_dir), timeout_s=args.timeout)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from cxr_triage.services import resolve_services
    from migrations import upgrade_to_head

    services = resolve_services(CommonSettings())
    try:
        upgrade_to_head(services.database_url)
    finally:
        services.stop()
    print("database schema is up to date")
    return 0


def _run_with_services(run: Callable[[], int]) -> int:
    """Resolve Postgres/Redis, export their URLs for the process's settings to read, bring
    an embedded database to the current schema (a fresh data folder has none), run."""
    from cxr_triage.services import resolve_services
    from migrations import upgrade_to_head

    services = resolve_services(CommonSettings())
    os.environ["CXR_DATABASE_URL"] = services.database_url
    os.environ["CXR_BROKER_URL"] = services.broker_url
    try:
        if services.embedded is not None:
            upgrade_to_head(services.database_url)
        return run()
    finally:
        services.stop()


def _cmd_listen(args: argparse.Namespace) -> int:
    from dicom_listener.server import run_listener

    return _run_with_services(lambda: run_listener(ListenerSettings()))


def _cmd_work(args: argparse.Namespace) -> int:
    from worker.app import run_worker

    if args.batch_size:
        os.environ["CXR_BATCH_MAX_SIZE"] = str(args.batch_size)
    if args.device:
        os.environ["CXR_DEVICE"] = args.device
    return _run_with_services(lambda: run_worker(WorkerSettings()))


def _cmd_web(args: argparse.Namespace) -> int:
    from worklist.server import run_web

    if args.port is not None:
        os.environ["CXR_WEB_PORT"] = str(args.port)
    return _run_with_services(lambda: run_web(WebSettings()))


def _cmd_up(args: argparse.Namespace) -> int:
    from cxr_triage.processes import Child, spawn, stop_all, wait_for_port
    from cxr_triage.services import resolve_services
    from migrations import upgrade_to_head

    settings = ListenerSettings()
    services = resolve_services(settings)
    children: list[Child] = []
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        upgrade_to_head(services.database_url)
        env = services.child_env(dict(os.environ))
        children.append(spawn("listener", ["listen"], env))
        for i in range(args.workers):
            children.append(spawn(f"worker-{i + 1}", ["work"], env))
        web = WebSettings()
        if not args.no_web:
            children.append(spawn("web", ["web"], env))
        host = "127.0.0.1" if settings.dicom_host in ("0.0.0.0", "") else settings.dicom_host
        wait_for_port(host, settings.dicom_port, children)
        web_line = "" if args.no_web else f"worklist http://{web.web_host}:{web.web_port}/, "
        print(
            f"cxr-triage is up: DICOM {settings.ae_title}@{host}:{settings.dicom_port}, "
            f"{args.workers} worker(s), {web_line}`cxr-triage worklist` prints it. "
            "Ctrl-C stops."
        )
        while not stop.wait(0.5):
            dead = [c for c in children if c.proc.poll() is not None]
            if dead:
                print(f"{dead[0].name} exited with code {dead[0].proc.returncode}; stopping")
                return 1
        return 0
    finally:
        stop_all(children)
        services.stop()
        print("cxr-triage stopped")


def _cmd_worklist(args: argparse.Namespace) -> int:
    from cxr_db import make_engine, reads
    from cxr_triage.worklist_view import as_json, as_table

    def show() -> int:
        engine = make_engine(CommonSettings().database_url_value(), pool_size=1)
        entries = reads.worklist(engine, limit=args.limit)
        engine.dispose()
        print(as_json(entries) if args.json else as_table(entries))
        return 0

    return _run_with_services(show)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the bundled sample studies and print the worklist",
        description="Start Postgres/Redis (embedded unless configured), a listener and a "
        "worker; send the bundled sample DICOM studies over a real association; wait until "
        "each is scored; print the triaged worklist; write heatmaps; stop everything.",
    )
    p.add_argument(
        "--data-dir", type=Path, help="demo folder (emptied first); default $CXR_DATA_DIR/demo"
    )
    p.add_argument("--timeout", type=float, default=240, help="seconds to wait for scoring")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "up",
        help="run listener, workers and web worklist in the foreground until Ctrl-C/SIGTERM",
        description="Run the DICOM listener, N workers and the web worklist (embedded "
        "Postgres/Redis unless configured) until Ctrl-C or SIGTERM, then stop cleanly.",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--no-web", action="store_true", help="do not start the web worklist")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser(
        "web",
        help="serve the radiologists' web worklist (CXR_WEB_HOST:CXR_WEB_PORT)",
        description="The triaged worklist in a browser: likely positives on top, each study "
        "with its heatmaps, score and model version. Read-only.",
    )
    p.add_argument("--port", type=int, default=None, help="overrides CXR_WEB_PORT (default 8080)")
    p.set_defaults(func=_cmd_web)

    p = sub.add_parser(
        "listen",
        help="run the DICOM C-STORE listener (one process)",
        description="Run the C-ECHO/C-STORE listener. Settings: CXR_AE_TITLE, "
        "CXR_DICOM_PORT, CXR_ALLOWED_CALLING_AE_TITLES, CXR_MAX_ASSOCIATIONS, "
        "CXR_STORAGE_URI.",
    )
    p.set_defaults(func=_cmd_listen)

    p = sub.add_parser(
        "work",
        help="run one scoring worker process",
        description="Consume scoring jobs: decode, check eligibility, score in "
        "batches, write predictions and heatmaps. Settings: CXR_BATCH_MAX_SIZE, "
        "CXR_BATCH_MAX_WAIT_MS, CXR_DEVICE, CXR_CALIBRATION_PATH.",
    )
    p.add_argument("--batch-size", type=int, help="maximum batch size (CXR_BATCH_MAX_SIZE)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.set_defaults(func=_cmd_work)

    p = sub.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Apply the Alembic migrations to CXR_DATABASE_URL.",
    )
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser(
        "worklist",
        help="print the triaged worklist (table or --json)",
        description="Studies with likely positives first, then by score, then "
        "arrival; failed and not-eligible studies stay listed with the reason.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array, worklist order")
    p.add_argument("--limit", type=int, default=1000, help="at most this many studies")
    p.set_defaults(func=_cmd_worklist)

    from cxr_triage.send import add_send_arguments, run_send

    p = sub.add_parser(
        "send",
        help="send DICOM files or folders to a listener (C-STORE)",
        description="C-STORE client with a progress bar, for demos, benchmarks "
        "and migrating backlogs.",
    )
    add_send_arguments(p)
    p.set_defaults(func=run_send)

    try:
        from training.cli import register
    except ImportError:  # training extras absent in a slim worker image
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = CommonSettings()
    configure_logging(args.log_level or settings.log_level, settings.log_format)
    try:
        code: int = args.func(args)
        return int(code)
    except CxrTriageError as exc:
        print(f"cxr-triage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
