"""The ``cxr-triage`` command: one entry point for every process and tool.

``main`` builds the process's settings once (the class its command names) and hands them
to the command, which derives what it needs with ``with_overrides`` (the resolved service
URLs, ``--batch-size``, ``--port``); environment variables are written only for the child
processes that ``up`` and ``demo`` start. The training commands are forwarded to
``training.cli`` and imported only when one runs, so the runtime never loads training
code or its dependencies.

Clinical decision support, not diagnosis: every output says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from cxr_common.clinical import DISCLAIMER
from cxr_common.errors import CxrTriageError
from cxr_common.lifecycle import stop_on_signals
from cxr_common.logs import configure_logging
from cxr_common.settings import (
    CommonSettings,
    ListenerSettings,
    ResultSettings,
    SchedulerSettings,
    SupervisorSettings,
    WebSettings,
    WorkerSettings,
    describe_settings_error,
)

log = logging.getLogger("cxr_triage")

S = TypeVar("S", bound=CommonSettings)
Command = Callable[[argparse.Namespace, CommonSettings], int]

DESCRIPTION = f"""\
cxr-triage: batch screening of chest radiographs for likely pneumonia.
DICOM in (C-STORE listener), batched CNN scoring with Grad-CAM heatmaps in workers,
a triaged worklist with likely positives first. {DISCLAIMER}

Services: set CXR_DATABASE_URL (Postgres) and CXR_BROKER_URL (Redis). When they are
unset, an embedded Postgres and Redis start in CXR_DATA_DIR (default
~/.local/share/cxr-triage), so every command works on a fresh machine.
"""

#: Commands that ``training.cli`` implements (``pip install cxr-triage[training]``); their
#: arguments and full help live there.
TRAINING_COMMANDS = {
    "train": "fine-tune the pneumonia classifier",
    "evaluate": "metrics.json + ROC/PR/reliability/confusion/Grad-CAM plots on a labelled set",
    "calibrate": "fit a site calibration (threshold for target sensitivity + temperature)",
    "predict": "score DICOM / image files offline",
    "validate": "site validation by stratum (age, sex, view, manufacturer, modality) from labels",
    "groups": "acquisition-group audit: ImageNet-feature clusters, class balance, errors per group",
    "ood-fit": "fit the image-based distribution check (ood.json next to the weights)",
    "ood-evaluate": "compare distribution checks on check images, adult films, shifts",
}


def _cmd_demo(args: argparse.Namespace, settings: SupervisorSettings) -> int:
    from cxr_triage.demo import run_demo

    data_dir = args.data_dir or (settings.data_dir / "demo")
    return run_demo(settings, Path(data_dir), timeout_s=args.timeout, verbose=args.verbose)


def _cmd_migrate(args: argparse.Namespace, settings: WorkerSettings) -> int:
    from cxr_triage.models_cli import migrate_registers_model
    from cxr_triage.services import resolve_services

    services = resolve_services(settings)
    try:
        services.prepare(migrate=True)
        active = migrate_registers_model(settings, services.database_url)
    finally:
        services.stop()
    roles = "per-process database roles granted" if services.roles else "no database roles"
    print(f"database schema is up to date ({roles}); active model {active.version}")
    return 0


def _run_with_services(settings: S, run: Callable[[S], int], kind: str | None = None) -> int:
    """Resolve Postgres/Redis, bring an embedded database to the current schema (a fresh
    data folder has none) and its roles, run with ``settings`` pointing at them, connected
    as ``kind``'s database role (``cxr_db.roles``; ``None``: the owner, for admin tools)."""
    from cxr_triage.services import resolve_services, warn_if_superuser

    services = resolve_services(settings)
    try:
        services.prepare(migrate=services.embedded is not None)
        if kind == "worker" and services.embedded is not None and services.roles:
            _register_model_as_owner(settings, services.database_url)
        settings = services.apply(settings, kind)
        if kind is not None:  # admin commands run as the owner on purpose
            warn_if_superuser(settings)
        return run(settings)
    finally:
        services.stop()


def _register_model_as_owner(settings: CommonSettings, database_url: str) -> None:
    """What ``migrate`` does: the configured model registered and active when none is
    (a worker's role may only read the registry)."""
    from cxr_triage.models_cli import migrate_registers_model

    if isinstance(settings, WorkerSettings):
        migrate_registers_model(settings, database_url)


def _cmd_listen(args: argparse.Namespace, settings: ListenerSettings) -> int:
    from dicom_listener.server import run_listener

    if args.processes is not None:
        settings = settings.with_overrides(listener_processes=args.processes)
    if settings.resolved_listener_processes > 1:
        return _run_with_services(settings, _supervise_listeners, "listener")
    return _run_with_services(settings, run_listener, "listener")


def _supervise_listeners(settings: ListenerSettings) -> int:
    """``cxr-triage listen --processes N``: N listener children on one port (SO_REUSEPORT),
    each restarted when it dies, all stopped on SIGINT/SIGTERM. Their settings travel as
    ``CXR_*`` variables, plus each child's index. Returns 0, or the code of a child refused
    at start (then the others are stopped too)."""
    from cxr_triage.processes import cxr_triage_command, settings_env, supervise

    count = settings.resolved_listener_processes
    from cxr_triage.services import ROLE_PASSWORD_SETTINGS, without_role_passwords

    names = [n for n in type(settings).model_fields if n not in ROLE_PASSWORD_SETTINGS]
    base = without_role_passwords(dict(os.environ))
    base.update(settings_env(settings, names))
    base["CXR_LISTENER_PROCESSES"] = "1"
    codes = [0] * count
    with stop_on_signals("the listeners") as stop:

        def run(index: int) -> None:
            env = {**base, "CXR_LISTENER_PROCESS_INDEX": str(index)}
            codes[index] = supervise(f"listener-{index}", cxr_triage_command("listen"), env, stop)
            if codes[index]:
                stop.set()  # a child refused at start: the others would be refused too

        threads = [
            threading.Thread(target=run, args=(i,), name=f"supervise-listener-{i}")
            for i in range(count)
        ]
        for thread in threads:
            thread.start()
        log.info("%d listener processes on %s:%d", count, settings.dicom_host, settings.dicom_port)
        while any(t.is_alive() for t in threads):
            stop.wait(0.5)
        for thread in threads:
            thread.join()
    return max(codes)


def _cmd_work(args: argparse.Namespace, settings: WorkerSettings) -> int:
    from worker.app import run_worker

    overrides = {"batch_max_size": args.batch_size, "device": args.device}
    settings = settings.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    if settings.restart_on_exit:
        return _run_with_services(settings, _supervise_worker, "worker")
    return _run_with_services(settings, run_worker, "worker")


def _supervise_worker(settings: WorkerSettings) -> int:
    """``cxr-triage work``: run the worker in a child process and restart it when it dies
    (issue 12, defect 2); its settings travel as ``CXR_*`` variables."""
    from cxr_triage.processes import cxr_triage_command, settings_env, supervise
    from cxr_triage.services import ROLE_PASSWORD_SETTINGS, without_role_passwords

    names = [n for n in type(settings).model_fields if n not in ROLE_PASSWORD_SETTINGS]
    env = without_role_passwords(dict(os.environ))
    env.update(settings_env(settings, names))
    env["CXR_RESTART_ON_EXIT"] = "false"
    with stop_on_signals("the worker") as stop:
        return supervise("worker", cxr_triage_command("work"), env, stop)


def _cmd_schedule(args: argparse.Namespace, settings: SchedulerSettings) -> int:
    from cxr_scheduler.service import run_scheduler

    return _run_with_services(settings, run_scheduler, "scheduler")


def _cmd_send_results(args: argparse.Namespace, settings: ResultSettings) -> int:
    from cxr_hl7 import parse_hl7_destinations
    from cxr_results import parse_destinations
    from cxr_sender.service import run_results_sender

    parse_destinations(settings.result_destinations)  # a malformed entry: exit 2 at once
    parse_hl7_destinations(settings.hl7_destinations)  # likewise
    return _run_with_services(settings, run_results_sender, "results")


def _cmd_web(args: argparse.Namespace, settings: WebSettings) -> int:
    from worklist.server import run_web

    overrides = {
        "web_port": args.port,
        "web_host": args.host,
        "web_tls_cert": args.tls_cert,
        "web_tls_key": args.tls_key,
    }
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        settings = settings.with_overrides(**changes)
    return _run_with_services(settings, run_web, "web")


def _cmd_up(args: argparse.Namespace, settings: SupervisorSettings) -> int:
    from cxr_triage.processes import (
        ROLES,
        Child,
        RestartPolicy,
        restart_dead_workers,
        spawn,
        stop_all,
        wait_for_port,
    )
    from cxr_triage.services import resolve_services

    if args.listener_processes is not None:
        # checked here (>= 1, a fixed port), so `up` refuses before starting anything
        settings = settings.with_overrides(listener_processes=args.listener_processes)
    services = resolve_services(settings)
    children: list[Child] = []
    restarts = RestartPolicy()
    # the handlers stay until everything is stopped: a second Ctrl-C cannot cut clean-up short
    with stop_on_signals("cxr-triage up") as stop:
        try:
            services.prepare(migrate=True)
            if services.roles:
                _register_model_as_owner(settings, services.database_url)
            base = dict(os.environ)
            if args.listener_processes is not None:
                base["CXR_LISTENER_PROCESSES"] = str(settings.listener_processes)
            # each child connects as its own database role where there are roles
            envs = {role.name: services.child_env(base, role.name) for role in ROLES}
            for role in ROLES:  # the services of docker-compose.yml
                if role.name == "worker":
                    for i in range(args.workers):
                        children.append(spawn(f"worker-{i + 1}", role.command, envs["worker"]))
                elif role.name != "web" or not args.no_web:
                    children.append(spawn(role.name, role.command, envs[role.name]))
            host = "127.0.0.1" if settings.dicom_host in ("0.0.0.0", "") else settings.dicom_host
            wait_for_port(host, settings.dicom_port, children)
            web = (
                "" if args.no_web else f"worklist http://{settings.web_host}:{settings.web_port}/, "
            )
            print(
                f"cxr-triage is up: DICOM {settings.ae_title}@{host}:{settings.dicom_port}, "
                f"{args.workers} worker(s), {web}`cxr-triage worklist` prints it. "
                "Ctrl-C stops."
            )
            while not stop.wait(0.5):
                # a dead worker is restarted (issue 12); any other dead child stops `up`
                dead = restart_dead_workers(children, envs["worker"], restarts)
                if dead is not None:
                    print(f"{dead.name} exited with code {dead.proc.returncode}; stopping")
                    return 1
                lost = services.embedded.lost() if services.embedded is not None else None
                if lost:
                    print(
                        f"{lost}: nothing can be stored or scored without it; stopping "
                        "(run `cxr-triage up` again to restart everything)",
                        flush=True,
                    )
                    return 1
            return 0
        finally:
            stop_all(children)
            services.stop()
            print("cxr-triage stopped")


def _cmd_worklist(args: argparse.Namespace, settings: CommonSettings) -> int:
    from cxr_db import make_engine
    from cxr_db.audit import store as audit
    from cxr_db.worklist import reads
    from cxr_triage.accounts_cli import cli_actor
    from cxr_triage.worklist_view import as_json, as_table

    query = reads.WorklistQuery(
        view=reads.ReadView(args.state), search=args.search, limit=min(args.limit or 500, 500)
    )

    def show(settings: CommonSettings) -> int:
        engine = make_engine(settings.database_url_value(), pool_size=1)
        try:
            if args.limit:
                entries = reads.worklist_page(engine, query).entries
            else:
                entries = reads.iter_worklist(engine, query)
            audit.record(
                engine,
                audit.worklist_view(
                    cli_actor(), "cli", query.view.value, len(entries), bool(args.search)
                ),
            )
        finally:
            engine.dispose()
        print(as_json(entries) if args.json else as_table(entries))
        return 0

    return _run_with_services(settings, show)


def _since_window(value: str) -> tuple[str, float]:
    """``--since``: a duration (``90m``, ``24h``, ``7d``, ``3600s``) or an ISO time."""
    import re
    from datetime import UTC, datetime

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if match:
        return value, float(match[1]) * units[match[2]]
    try:
        since = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a duration like 24h, 7d, 90m or an ISO time"
        ) from None
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    return f"since {since.isoformat()}", (datetime.now(UTC) - since).total_seconds()


def _cmd_stats(args: argparse.Namespace, settings: CommonSettings) -> int:
    import json

    from cxr_db import make_engine
    from cxr_db.reading import stats

    windows = [args.since] if args.since else list(stats.DEFAULT_WINDOWS)

    def show(s: CommonSettings) -> int:
        engine = make_engine(s.database_url_value(), pool_size=1)
        try:
            found = stats.read_stats(engine, windows, s.read_target_s)
        finally:
            engine.dispose()
        if args.json:
            print(json.dumps([w.as_json() for w in found], indent=2))
            return 0
        rows = [list(stats.TABLE_HEADER), *(r for w in found for r in w.table_rows())]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        print(f"time to read: first instance to first answer; target {s.read_target_s:.0f} s")
        return 0

    return _run_with_services(settings, show)


def _cmd_requeue(args: argparse.Namespace, settings: CommonSettings) -> int:
    """Put failed or stuck instances back in work (issue 12): the operator's way after
    fixing what the reason said. Resets attempts; never touches a scored instance."""
    from cxr_db import make_engine
    from cxr_db.instances import writes as repo
    from cxr_queue import ScoreJob, enqueue_score, make_celery

    if not args.failed and args.study is None:
        print("cxr-triage requeue: name a study (--study UID) or pass --failed", file=sys.stderr)
        return 2

    def run(s: CommonSettings) -> int:
        engine = make_engine(s.database_url_value(), pool_size=1)
        try:
            found = repo.requeue_candidates(
                engine, failed=args.failed, study_instance_uid=args.study
            )
            for c in found:
                line = f"{c.study_instance_uid}  {c.sop_instance_uid}  {c.status.value}"
                print(f"{line}  {c.reason or ''}")
            if not found:
                what = f"study {args.study}" if args.study else "any study"
                print(f"nothing to requeue: no failed or stuck instance in {what}")
                return 1 if args.study else 0
            if args.dry_run:
                print(f"dry run: {len(found)} instance(s) would be requeued")
                return 0
            jobs = repo.reset_for_requeue(engine, [c.instance_id for c in found])
            app = make_celery(s.broker_url_value(), s.queue_name)
            published = 0
            for job in jobs:
                try:
                    enqueue_score(
                        app,
                        ScoreJob.model_validate(job, from_attributes=True),
                        s.queue_name,
                        job.lane,
                    )
                except Exception as exc:  # noqa: BLE001 - broker errors come in many types
                    print(
                        f"broker unavailable ({type(exc).__name__}): the scheduler's reconciler "
                        "enqueues the rest once it is back",
                        file=sys.stderr,
                    )
                    break
                published += 1
            print(f"requeued {len(jobs)} instance(s) ({published} sent to the workers now)")
            return 0
        finally:
            engine.dispose()

    return _run_with_services(settings, run)


def _cmd_conflicts(args: argparse.Namespace, settings: CommonSettings) -> int:
    """List the unresolved conflicts (instances refused: another patient in a known study,
    or a known SOP Instance UID with other content), or mark one resolved. UIDs and
    attribute names only, never patient data."""
    from cxr_db import make_engine
    from cxr_db.conflicts import store as conflicts

    def run(s: CommonSettings) -> int:
        engine = make_engine(s.database_url_value(), pool_size=1)
        try:
            if args.action == "resolve":
                if not conflicts.resolve_conflict(engine, args.id, args.by):
                    print(
                        f"cxr-triage conflicts: no unresolved conflict {args.id}", file=sys.stderr
                    )
                    return 1
                print(f"conflict {args.id} resolved by {args.by}")
                return 0
            found = conflicts.open_conflicts(engine, limit=1000)
            for c in found:
                print(
                    f"{c.id}  {c.kind.value}  {c.received_at:%Y-%m-%d %H:%M}  "
                    f"study={c.study_instance_uid}  sop={c.sop_instance_uid}  "
                    f"differs={c.differing or 'content'}  from={c.calling_ae_title or '-'}"
                )
            if not found:
                print("no unresolved conflict")
            return 0
        finally:
            engine.dispose()

    return _run_with_services(settings, run)


def _add_conflicts_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "conflicts",
        help="instances refused as conflicts (another patient in a study, changed content)",
        description="List the unresolved conflicts (shown on the worklist and ops page), or "
        "mark one resolved once the sender corrected it.",
    )
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="unresolved conflicts, newest first")
    resolve = actions.add_parser("resolve", help="mark one conflict resolved")
    resolve.add_argument("id", type=int, help="the conflict's ID (from list or the ops page)")
    resolve.add_argument("--by", required=True, help="who resolved it (recorded)")
    p.set_defaults(func=_cmd_conflicts, settings_class=CommonSettings)


def _run_accounts(
    handler: Callable[[Any, argparse.Namespace], int],
    args: argparse.Namespace,
    settings: CommonSettings,
) -> int:
    """``user``, ``token``, ``audit``, ``answers``: the handler gets an engine on the
    resolved (or embedded, migrated) database."""
    from cxr_db import make_engine

    def run(settings: CommonSettings) -> int:
        engine = make_engine(settings.database_url_value(), pool_size=1)
        try:
            return handler(engine, args)
        finally:
            engine.dispose()

    return _run_with_services(settings, run)


def _add_requeue_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "requeue",
        help="put failed or stuck instances back in work (after fixing the cause)",
        description="Requeue every failed instance (--failed), or the failed and stuck "
        "instances of one study (--study UID), with their attempts reset. Scored "
        "instances are never touched. --dry-run lists what would be requeued.",
    )
    p.add_argument("--failed", action="store_true", help="every failed instance")
    p.add_argument("--study", metavar="UID", help="one study (its Study Instance UID)")
    p.add_argument("--dry-run", action="store_true", help="list, change nothing")
    p.set_defaults(func=_cmd_requeue, settings_class=CommonSettings)


def _cmd_send(args: argparse.Namespace, settings: CommonSettings) -> int:
    from cxr_triage.send import run_send

    return run_send(args)


def _init_from_registry(argv: list[str]) -> list[str]:
    """``train --init-from VERSION``: a registered version stands for its folder."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name != "--init-from":
            continue
        at = i if eq else i + 1
        if not eq and at >= len(argv):
            return argv
        value = value if eq else argv[at]
        if not value or Path(value).exists():
            return argv
        from cxr_db import make_engine
        from cxr_db.registry.store import get_model
        from cxr_triage.services import resolve_services

        services = resolve_services(CommonSettings())
        try:
            engine = make_engine(services.database_url, pool_size=1)
            entry = get_model(engine, value)
            engine.dispose()
        finally:
            services.stop()
        if entry is None:
            raise CxrTriageError(
                f"--init-from {value}: neither a folder nor a registered model version"
            )
        out = list(argv)
        out[at] = f"--init-from={entry.uri}" if eq else entry.uri
        return out
    return argv


def _run_training(command: str, argv: list[str]) -> int:
    """Hand ``cxr-triage COMMAND ARGS`` to ``training.cli``: the one import of training in
    the runtime CLI, made only when a training command runs."""
    if command == "train":
        try:
            argv = _init_from_registry(argv)
        except CxrTriageError as exc:
            print(f"cxr-triage train: {exc}", file=sys.stderr)
            return 2
    try:
        from training.cli import main as training_main
    except ModuleNotFoundError as exc:
        print(
            f"cxr-triage {command}: the training code is not installed ({exc.name} is "
            "missing); install the training extra: pip install 'cxr-triage[training]'",
            file=sys.stderr,
        )
        return 2
    return training_main([command, *argv], prog="cxr-triage")


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
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the listener's and worker's logs here instead of in DATA_DIR/demo.log",
    )
    p.set_defaults(func=_cmd_demo, settings_class=SupervisorSettings)

    p = sub.add_parser(
        "up",
        help="run every role (listener, scheduler, workers, results, web) until Ctrl-C/SIGTERM",
        description="Run the roles compose runs, as child processes: the DICOM listener, the "
        "scheduler, N workers, the results sender and the web worklist (embedded "
        "Postgres/Redis unless configured) until Ctrl-C or SIGTERM, then stop cleanly.",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--listener-processes",
        type=int,
        default=None,
        metavar="N",
        help="listener processes sharing the DICOM port (overrides CXR_LISTENER_PROCESSES, "
        "default one per CPU core, at most 8; see 'listen --processes')",
    )
    p.add_argument("--no-web", action="store_true", help="do not start the web worklist")
    p.set_defaults(func=_cmd_up, settings_class=SupervisorSettings)

    p = sub.add_parser(
        "web",
        help="serve the radiologists' web worklist (CXR_WEB_HOST:CXR_WEB_PORT)",
        description="The reading worklist in a browser, behind a sign-in: unread studies "
        "with likely positives first, study pages with radiograph, heatmap and an answer "
        "form, the audit log for admins, a JSON API for tokens. Settings: CXR_WEB_HOST, "
        "CXR_WEB_PORT, CXR_WEB_TLS_CERT/CXR_WEB_TLS_KEY (HTTPS), CXR_WEB_TRUSTED_HOSTS, "
        "CXR_WEB_IDLE_TIMEOUT_S, CXR_WEB_CLAIM_TIMEOUT_S. Add users with "
        "'cxr-triage user add NAME --role radiologist'.",
    )
    p.add_argument("--port", type=int, default=None, help="overrides CXR_WEB_PORT (default 8080)")
    p.add_argument("--host", default=None, help="overrides CXR_WEB_HOST (default 127.0.0.1)")
    p.add_argument("--tls-cert", type=Path, default=None, help="overrides CXR_WEB_TLS_CERT")
    p.add_argument("--tls-key", type=Path, default=None, help="overrides CXR_WEB_TLS_KEY")
    p.set_defaults(func=_cmd_web, settings_class=WebSettings)

    p = sub.add_parser(
        "listen",
        help="run the DICOM C-STORE listener (one process, or --processes N on one port)",
        description="Run the C-ECHO/C-STORE listener. Settings: CXR_AE_TITLE, "
        "CXR_DICOM_PORT, CXR_ALLOWED_CALLING_AE_TITLES, CXR_MAX_ASSOCIATIONS, "
        "CXR_STORAGE_URI.",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="listener processes sharing the port (SO_REUSEPORT, Linux; overrides "
        "CXR_LISTENER_PROCESSES, default one per CPU core, at most 8). Each child is "
        "restarted when it dies; the association and per-peer limits apply per process; "
        "needs a fixed CXR_DICOM_PORT",
    )
    p.set_defaults(func=_cmd_listen, settings_class=ListenerSettings)

    p = sub.add_parser(
        "work",
        help="run one scoring worker process",
        description="Consume scoring jobs: decode, check eligibility, score in "
        "batches, write predictions and heatmaps. Settings: CXR_BATCH_MAX_SIZE, "
        "CXR_BATCH_MAX_WAIT_MS, CXR_DEVICE, CXR_CALIBRATION_PATH.",
    )
    p.add_argument("--batch-size", type=int, help="maximum batch size (CXR_BATCH_MAX_SIZE)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.set_defaults(func=_cmd_work, settings_class=WorkerSettings)

    p = sub.add_parser(
        "schedule",
        help="run the scheduler: reconciler + study completeness (periodic jobs)",
        description="Run the periodic jobs that keep every study moving: the reconciler "
        "(re-enqueues instances committed but in no worker's hands) and the study "
        "completeness monitor (marks quiet studies complete, enqueues their results). "
        "Settings: CXR_RECONCILE_INTERVAL_S, CXR_RECONCILE_GRACE_S, CXR_STALE_PROCESSING_S, "
        "CXR_STUDY_QUIET_S, CXR_COMPLETENESS_INTERVAL_S, CXR_SCHEDULER_HEARTBEAT_FILE.",
    )
    p.set_defaults(func=_cmd_schedule, settings_class=SchedulerSettings)

    p = sub.add_parser(
        "send-results",
        help="run the results sender: SC, SR and heatmap SEG of each complete study to PACS",
        description="Consume the results queue: for each complete study, build the heatmap "
        "Secondary Capture, the TID 1500 SR (or a not-analysed SR) and the heatmap "
        "Segmentation and C-STORE them to every destination, and send an HL7 ORU^R01 to "
        "each RIS. Settings: CXR_RESULT_DESTINATIONS (AE@host:port[sc+sr+seg],...; empty = "
        "nothing is sent), CXR_RESULT_NOT_ELIGIBLE_REPORT, CXR_RESULT_CALLING_AE_TITLE, "
        "CXR_UID_ROOT, CXR_RESULT_MAX_RETRIES, CXR_HL7_DESTINATIONS (host:port,...).",
    )
    p.set_defaults(func=_cmd_send_results, settings_class=ResultSettings)

    p = sub.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Apply the Alembic migrations to CXR_DATABASE_URL.",
    )
    p.set_defaults(func=_cmd_migrate, settings_class=WorkerSettings)

    p = sub.add_parser(
        "worklist",
        help="print the triaged worklist (table or --json)",
        description="Studies with likely positives first, then by score, then "
        "arrival; failed and not-eligible studies stay listed with the reason. Unread "
        "studies (in progress included) by default; every one of them, however many.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array, worklist order")
    p.add_argument(
        "--state",
        choices=["unread", "read", "all"],
        default="unread",
        help="unread (default: not yet answered, in progress included), read (newest first) or all",
    )
    p.add_argument("--search", default=None, help="accession, Study Instance UID or reader")
    p.add_argument(
        "--limit", type=int, default=None, help="at most this many studies (default: all)"
    )
    p.set_defaults(func=_cmd_worklist, settings_class=CommonSettings)

    p = sub.add_parser(
        "stats",
        help="time to read and time to score, flagged vs not flagged (table or --json)",
        description="p50/p95 time to read (first instance received to first answer) and "
        "time to score, flagged vs not flagged studies, by arrival over 24 h and 7 days, "
        "with counts and the share of flagged studies read within CXR_READ_TARGET_S.",
    )
    p.add_argument(
        "--since",
        type=_since_window,
        default=None,
        help="one window instead: a duration (90m, 24h, 7d) or an ISO time",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_stats, settings_class=CommonSettings)

    from cxr_triage import accounts_cli

    accounts_cli.add_arguments(sub, run=_run_accounts)
    for name in ("user", "token", "audit", "answers"):
        sub.choices[name].set_defaults(settings_class=CommonSettings)

    _add_requeue_parser(sub)
    _add_conflicts_parser(sub)

    from cxr_triage.send import add_send_arguments

    p = sub.add_parser(
        "send",
        help="send DICOM files or folders to a listener (C-STORE)",
        description="C-STORE client with a progress bar, for demos, benchmarks "
        "and migrating backlogs.",
    )
    add_send_arguments(p)
    p.set_defaults(func=_cmd_send, settings_class=CommonSettings)

    from cxr_triage import models_cli

    models_cli.add_arguments(sub)

    for name, help_line in TRAINING_COMMANDS.items():
        # Arguments are parsed by training.cli (see main); `cxr-triage train --help` shows
        # training's full help.
        p = sub.add_parser(name, help=help_line, add_help=False)
        p.set_defaults(func=None, settings_class=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in TRAINING_COMMANDS:
        return _run_training(args.command, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        settings: CommonSettings = args.settings_class()
    except ValidationError as exc:
        print(f"cxr-triage: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    configure_logging(args.log_level or settings.log_level, settings.log_format)
    command: Command = args.func
    try:
        return int(command(args, settings))
    except CxrTriageError as exc:
        print(f"cxr-triage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
