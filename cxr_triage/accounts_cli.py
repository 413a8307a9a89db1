"""``cxr-triage user|token|audit|answers``: accounts, API tokens and exports at the command line.

Wiring into ``cxr_triage.cli.build_parser`` is one line::

    accounts_cli.add_arguments(sub)              # or add_arguments(sub, run=<runner>)

Each sub-command sets ``func`` to ``run(handler, args)``; the default runner resolves the
configured (or embedded) Postgres, brings an embedded one to the current schema, and calls
``handler(engine, args)``. Handlers take an Engine, so tests call them directly.

Passwords are read from standard input, never from an argument (arguments show in ``ps``
and shell history): a prompt without echo on a terminal, one line otherwise, e.g.
``printf '%s\\n' "$PW" | cxr-triage user add alice --role radiologist``. A token is printed
once, alone on standard output, so ``TOKEN=$(cxr-triage token create ...)`` captures it.
Nothing here logs a password or a token.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine

from cxr_common.errors import ConfigurationError
from cxr_common.passwords import Passwords, WeakPasswordError, check_password_policy
from cxr_db.accounts import store as accounts
from cxr_db.accounts.tables import Role
from cxr_db.audit import store as audit
from cxr_db.audit.store import Actor, AuditEvent, AuditQuery
from cxr_db.audit.tables import ActorKind, AuditAction
from cxr_db.reading import store as reading

EngineHandler = Callable[[Engine, argparse.Namespace], int]
Runner = Callable[..., int]
"""``run(handler, args, *rest)``: ``cxr_triage.cli`` passes the process's settings as
``rest`` (built once in ``main``); ``run_with_engine`` needs none."""

ROLE_CHOICES = [r.value for r in Role]
DEFAULT_TOKEN_DAYS = 90
ROLE_HELP = "radiologist (reads, answers), admin (users, audit, settings), ops (health, metrics)"
#: Token-only roles: a modality or PACS storing by STOW-RS (reads nothing).
TOKEN_ROLE_HELP = ROLE_HELP + ", sender (stores instances by STOW-RS; reads nothing)"
USER_ROLE_CHOICES = [r.value for r in Role if r in accounts.USER_ROLES]


def cli_actor() -> Actor:
    """The operator at the command line, named by the OS account: ``cli:<login>``."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers with arbitrary uids)
        login = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return Actor(f"cli:{login}"[:128], ActorKind.CLI)


def read_new_password(username: str, stdin: TextIO | None = None) -> str:
    """A new password from standard input: prompted twice without echo on a terminal,
    else one line (its line ending removed). Checked against the password policy."""
    stream = stdin or sys.stdin
    if stream.isatty():
        first = getpass.getpass(f"New password for {username}: ")
        check_password_policy(first)
        second = getpass.getpass("Repeat the password: ")
        if first != second:
            raise WeakPasswordError("the two passwords differ")
        return first
    line = stream.readline()
    if not line:
        raise WeakPasswordError(
            "no password on standard input: pipe one line, e.g. "
            f"printf '%s\\n' \"$PASSWORD\" | cxr-triage user add {username} --role ROLE"
        )
    password = line.removesuffix("\n").removesuffix("\r")
    check_password_policy(password)
    return password


def _out(stdout: TextIO | None) -> TextIO:
    return stdout or sys.stdout


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _write_csv_atomically(out: Path, header: Sequence[str], rows: Iterable[list[str]]) -> int:
    """Write a CSV next to ``out`` and rename it into place; returns the number of rows."""
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigurationError(f"--out {out}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".part")
    count = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for row in rows:
                writer.writerow(row)
                count += 1
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


# ---------------------------------------------------------------------------- users


def user_add(
    engine: Engine,
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    passwords: Passwords | None = None,
) -> int:
    accounts.validate_name(args.name, "user name")
    password = read_new_password(args.name, stdin)
    user = accounts.add_user(
        engine,
        args.name,
        password,
        Role(args.role),
        passwords=passwords or Passwords(),
        actor=cli_actor(),
    )
    print(f"user {user.username} added with role {user.role.value}", file=_out(stdout))
    return 0


def user_disable(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    user = accounts.disable_user(engine, args.name, actor=cli_actor())
    print(
        f"user {user.username} disabled: signed out everywhere, open claims released",
        file=_out(stdout),
    )
    return 0


def user_unlock(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    """Lift every lock-out of a user (from every client address) and clear its failures."""
    locked = accounts.unlock_user(engine, args.name, actor=cli_actor())
    print(
        f"user {args.name} unlocked: lock-outs lifted from {locked} client address(es)",
        file=_out(stdout),
    )
    return 0


def user_password(
    engine: Engine,
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    passwords: Passwords | None = None,
) -> int:
    """Set a user's password (read from standard input); their sessions end."""
    accounts.validate_name(args.name, "user name")
    password = read_new_password(args.name, stdin)
    accounts.change_password(
        engine, args.name, password, passwords=passwords or Passwords(), actor=cli_actor()
    )
    print(f"password of {args.name} changed: signed out everywhere", file=_out(stdout))
    return 0


def user_list(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    users = accounts.list_users(engine)
    out = _out(stdout)
    if getattr(args, "json", False):
        print(json.dumps([u.as_json() for u in users], indent=2), file=out)
        return 0
    if not users:
        print("no users yet: cxr-triage user add NAME --role ROLE", file=out)
        return 0
    now = datetime.now(UTC)
    rows = [["USER", "ROLE", "STATUS", "LAST SIGN-IN"]]
    for u in users:
        status = "disabled" if u.disabled else "active"
        if u.locked_until is not None and u.locked_until > now and not u.disabled:
            status = f"locked from some address until {_when(u.locked_until)}"
        rows.append([u.username, u.role.value, status, _when(u.last_login_at)])
    print(_table(rows), file=out)
    return 0


# ---------------------------------------------------------------------------- tokens


def token_create(
    engine: Engine,
    args: argparse.Namespace,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    days = getattr(args, "expires_days", DEFAULT_TOKEN_DAYS)
    created = accounts.create_token(
        engine,
        args.name,
        Role(args.role),
        actor=cli_actor(),
        lifetime=timedelta(days=days) if days else None,
    )
    expiry = f"expires {_when(created.info.expires_at)}" if days else "never expires"
    print(
        f"token {created.info.name} ({created.info.role.value}) created, {expiry}. It is "
        "shown once, below; store it now. Send it as 'Authorization: Bearer TOKEN'.",
        file=stderr or sys.stderr,
    )
    print(created.token, file=_out(stdout))
    return 0


def token_revoke(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    info = accounts.revoke_token(engine, args.name, actor=cli_actor())
    print(f"token {info.name} revoked", file=_out(stdout))
    return 0


def token_list(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    tokens = accounts.list_tokens(engine, include_revoked=getattr(args, "all", False))
    out = _out(stdout)
    if not tokens:
        print("no active tokens: cxr-triage token create NAME --role ROLE", file=out)
        return 0
    rows = [["TOKEN", "ROLE", "CREATED BY", "CREATED", "LAST USED", "EXPIRES", "REVOKED"]]
    for t in tokens:
        rows.append(
            [
                t.name,
                t.role.value,
                t.created_by,
                _when(t.created_at),
                _when(t.last_used_at),
                _when(t.expires_at),
                _when(t.revoked_at),
            ]
        )
    print(_table(rows), file=out)
    return 0


# ---------------------------------------------------------------------------- exports


def _days_arg(value: str) -> int:
    try:
        days = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days") from exc
    if not 0 <= days <= 3650:
        raise argparse.ArgumentTypeError("--expires-days is 0 (never) to 3650")
    return days


def _datetime_arg(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO date or time (2026-01-31 or 2026-01-31T08:00+00:00)"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # local time, as the operator typed it
    return parsed


def audit_export(engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    query = AuditQuery(
        actor=args.actor,
        action=AuditAction(args.action) if args.action else None,
        target=args.target,
        since=args.since,
        until=args.until,
    )
    out_path = Path(args.out)
    count = _write_csv_atomically(
        out_path, audit.CSV_COLUMNS, (e.as_csv_row() for e in audit.iter_entries(engine, query))
    )
    audit.record(
        engine,
        AuditEvent(AuditAction.AUDIT_EXPORT, cli_actor(), None, {"entries": count}),
    )
    print(f"{count} audit entries written to {out_path}", file=_out(stdout))
    return 0


def answers_export(
    engine: Engine, args: argparse.Namespace, *, stdout: TextIO | None = None
) -> int:
    counts = reading.LabelExport()
    out_path = Path(args.out)
    studies: set[str] = set()

    def rows() -> Iterable[list[str]]:
        for row in reading.iter_label_rows(engine, counts):
            studies.add(row.study_instance_uid)
            yield row.as_csv_row()

    count = _write_csv_atomically(out_path, reading.LABELS_COLUMNS, rows())
    audit.record(
        engine,
        AuditEvent(
            AuditAction.ANSWERS_EXPORT,
            cli_actor(),
            None,
            {"rows": count, "studies": len(studies), "studies_other": counts.studies_other},
        ),
    )
    out = _out(stdout)
    print(
        f"{count} scored instances of {len(studies)} read studies written to {out_path} "
        "(label 1 = pneumonia, 0 = no_pneumonia)",
        file=out,
    )
    if counts.studies_other:
        print(
            f"{counts.studies_other} studies answered 'other' left out: they have no 0/1 label",
            file=out,
        )
    print(
        f"use it as: cxr-triage calibrate --data {out_path} / cxr-triage evaluate --data "
        f"{out_path}",
        file=out,
    )
    return 0


# ---------------------------------------------------------------------------- wiring


def run_with_engine(handler: EngineHandler, args: argparse.Namespace) -> int:
    """Resolve the configured (or embedded) Postgres, migrate an embedded one, run."""
    from cxr_common.settings import CommonSettings
    from cxr_db import make_engine
    from cxr_triage.services import resolve_services
    from migrations import upgrade_to_head

    services = resolve_services(CommonSettings())
    try:
        if services.embedded is not None:
            upgrade_to_head(services.database_url)
        engine = make_engine(services.database_url, pool_size=1)
        try:
            return handler(engine, args)
        finally:
            engine.dispose()
    finally:
        services.stop()


def add_arguments(subparsers: Any, run: Runner = run_with_engine) -> None:
    """Register ``user``, ``token``, ``audit`` and ``answers`` on ``subparsers`` (the object
    ``ArgumentParser.add_subparsers`` returned)."""

    def bind(handler: EngineHandler) -> Callable[..., int]:
        return partial(run, handler)

    user = subparsers.add_parser(
        "user",
        help="add, disable or list the people who sign in to the web worklist",
        description="Users sign in to the web worklist. Roles: " + ROLE_HELP + ".",
    )
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    p = user_sub.add_parser(
        "add",
        help="add a user; the password is read from standard input",
        description="Add a user. The password is read from standard input, never from an "
        "argument: prompted (twice, without echo) on a terminal, else one line, e.g. "
        "printf '%s\\n' \"$PASSWORD\" | cxr-triage user add alice --role radiologist. "
        "At least 12 characters.",
    )
    p.add_argument("name", help="user name: letters, digits, '.', '_', '@', '-'")
    p.add_argument("--role", required=True, choices=USER_ROLE_CHOICES, help=ROLE_HELP)
    p.set_defaults(func=bind(user_add))
    p = user_sub.add_parser(
        "disable",
        help="disable a user: sign-in refused, sessions ended, claims released",
    )
    p.add_argument("name")
    p.set_defaults(func=bind(user_disable))
    p = user_sub.add_parser(
        "unlock",
        help="lift a user's sign-in lock-outs (from every client address)",
    )
    p.add_argument("name")
    p.set_defaults(func=bind(user_unlock))
    p = user_sub.add_parser(
        "password",
        help="set a user's password (read from standard input); their sessions end",
        description="Set a user's password, read from standard input like 'user add'. "
        "The user is signed out everywhere. Users change their own on the web page "
        "/account/password.",
    )
    p.add_argument("name")
    p.set_defaults(func=bind(user_password))
    p = user_sub.add_parser("list", help="list users with role and status")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=bind(user_list))

    token = subparsers.add_parser(
        "token",
        help="create, revoke or list API tokens for scripts and metrics scrapers",
        description="API tokens authenticate scripts ('Authorization: Bearer TOKEN'). A "
        "token is printed once and stored only as its sha256.",
    )
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    p = token_sub.add_parser("create", help="create a token and print it once")
    p.add_argument("name", help="token name (unique among active tokens)")
    p.add_argument("--role", required=True, choices=ROLE_CHOICES, help=TOKEN_ROLE_HELP)
    p.add_argument(
        "--expires-days",
        type=_days_arg,
        default=DEFAULT_TOKEN_DAYS,
        help=f"refused after this many days (default {DEFAULT_TOKEN_DAYS}; 0: never)",
    )
    p.set_defaults(func=bind(token_create))
    p = token_sub.add_parser("revoke", help="revoke the active token of that name")
    p.add_argument("name")
    p.set_defaults(func=bind(token_revoke))
    p = token_sub.add_parser("list", help="list tokens (never their values)")
    p.add_argument("--all", action="store_true", help="include revoked tokens")
    p.set_defaults(func=bind(token_list))

    audit_p = subparsers.add_parser(
        "audit", help="export the audit log (sign-ins, views, answers, account changes)"
    )
    audit_sub = audit_p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    p = audit_sub.add_parser(
        "export",
        help="write audit entries as CSV, oldest first",
        description="Write the audit log (filtered) as CSV: id, at, actor, actor_kind, "
        "action, target, client_addr, detail (JSON). The export is itself audited.",
    )
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")
    p.add_argument("--actor", help="only this user, token or cli:LOGIN")
    p.add_argument("--action", choices=[a.value for a in AuditAction], help="only this action")
    p.add_argument("--target", help="only this target (Study Instance UID, user, token)")
    p.add_argument("--since", type=_datetime_arg, help="at or after (ISO time)")
    p.add_argument("--until", type=_datetime_arg, help="before (ISO time)")
    p.set_defaults(func=bind(audit_export))

    answers = subparsers.add_parser(
        "answers", help="export radiologists' answers as a labels.csv for calibrate/evaluate"
    )
    answers_sub = answers.add_subparsers(dest="answers_command", required=True, metavar="ACTION")
    p = answers_sub.add_parser(
        "export",
        help="write answers joined to stored files and scores (labels.csv shape)",
        description="One row per scored instance of each read study: path (the stored "
        "file), label (1 pneumonia, 0 no_pneumonia), finding, score, model_version, "
        "study_instance_uid, sop_instance_uid, read_by, read_at. Studies answered 'other' "
        "are left out. Feed it to 'cxr-triage calibrate --data FILE' or 'evaluate'.",
    )
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")
    p.set_defaults(func=bind(answers_export))
