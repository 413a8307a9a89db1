"""JSON logs for deployments: one object per line, extra fields kept."""

from __future__ import annotations

import json
import logging

from cxr_common.logs import JsonFormatter


def test_json_formatter_emits_one_parseable_object_with_extras() -> None:
    record = logging.LogRecord(
        "worker.pipeline", logging.INFO, __file__, 1, "scored p=%.3f", (0.912,), None
    )
    record.sop_instance_uid = "1.2.3.4"
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["msg"] == "scored p=0.912"
    assert data["level"] == "INFO"
    assert data["logger"] == "worker.pipeline"
    assert data["sop_instance_uid"] == "1.2.3.4"
    assert "\n" not in line


def test_library_messages_warnings_and_exceptions_lose_their_quoted_values() -> None:
    """Issue 20: what pydicom, highdicom, pynetdicom, Celery or a warning says about a
    header value never reaches the log; nor does an exception's message, whoever logs it."""
    import io
    import warnings

    import pydicom
    import pydicom.config
    from pynetdicom import _config as pynetdicom_config

    from cxr_common.logs import RedactValues, protect_patient_data

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactValues())
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    saved = (
        pydicom.config.settings.reading_validation_mode,
        pydicom.config.settings.writing_validation_mode,
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS,
    )
    try:
        protect_patient_data()
        assert pydicom.config.settings.reading_validation_mode == pydicom.config.IGNORE
        assert pydicom.config.settings.writing_validation_mode == pydicom.config.IGNORE
        assert pynetdicom_config.LOG_REQUEST_IDENTIFIERS is False
        # pydicom no longer quotes an invalid value at all
        ds = pydicom.Dataset()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds.PatientBirthDate = "1970-01-01"
            ds.PatientName = "CANARY^" + "X" * 400  # over PN's length
        # and whatever a library or a warning says is redacted on the way out
        logging.getLogger("pydicom.valuerep").warning("Invalid value for VR DA: %r", "1970-01-01")
        logging.getLogger("highdicom.sr").error('Value "DOE^JANE" of PatientName is invalid')
        logging.getLogger("py.warnings").warning("UserWarning: Invalid value b'MRN-1'")
        header_value = "CANARY-ID-" + "7781"  # as read from a header (not in this source)
        try:
            try:
                int(header_value)
            except ValueError as exc:
                raise RuntimeError(f"could not read {exc}") from exc
        except RuntimeError:
            logging.getLogger("worker.tasks").exception("unexpected error scoring instance 7")
        logging.getLogger("worker.pipeline").warning("scored sop_instance_uid=%s", "1.2.3")
    finally:
        root.removeHandler(handler)
        logging.captureWarnings(False)
        (
            pydicom.config.settings.reading_validation_mode,
            pydicom.config.settings.writing_validation_mode,
            pynetdicom_config.LOG_REQUEST_IDENTIFIERS,
        ) = saved
    text = stream.getvalue()
    for canary in ("1970-01-01", "DOE", "JANE", "MRN-1", "CANARY-ID-7781"):
        assert canary not in text
    assert "pydicom.valuerep: Invalid value for VR DA: '<redacted>'" in text
    assert "ValueError: invalid literal for int() with base 10: '<redacted>'" in text
    assert "RuntimeError: could not read invalid literal" in text
    assert "The above exception was the direct cause of the following exception" in text
    assert "unexpected error scoring instance 7" in text
    assert "worker.pipeline: scored sop_instance_uid=1.2.3" in text  # ours: untouched


def test_json_logs_carry_the_redacted_traceback() -> None:
    from cxr_common.logs import RedactValues

    value = "DOE" + "^JANE"  # as read from a header (not in this source)
    try:
        raise ValueError(f"bad value {value!r}")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "worker.tasks", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    assert RedactValues().filter(record)
    data = json.loads(JsonFormatter().format(record))
    assert "DOE" not in data["exc"]
    assert "ValueError: bad value '<redacted>'" in data["exc"]


PROCESS_SCRIPT = r"""
import logging, sys, warnings
from cxr_common.logs import configure_logging
configure_logging("DEBUG", sys.argv[1])
import pydicom
name, mrn = "ZQXCANARY" + "^WIBBLE", "CANARY" + "-ID-7781"
birth, view = "1970" + "-01-01", "zqx" + "view"
ds = pydicom.Dataset()
ds.PatientName = name + "^" + "X" * 70    # too long for PN: pydicom would say so
ds.PatientBirthDate = birth               # not DA: pydicom would quote it
ds.ViewPosition = view                    # not CS: pydicom would quote it
warnings.warn(f"a library warning about {mrn!r}")
logging.getLogger("pynetdicom.dimse").warning("identifier PatientID=%r", mrn)
try:
    int(mrn)
except ValueError:
    logging.getLogger("worker.tasks").exception("unexpected error scoring instance 7")
print("done", flush=True)
"""


def test_a_real_process_set_up_by_configure_logging_never_prints_the_canary() -> None:
    """The by-design half of issue 20, in a real process (stdout and stderr captured): with
    the one logging set-up every ``cxr-triage`` process runs, pydicom's validation, a
    warning, a library log line and a logged exception all lose the header values they
    would print. (The paths each service takes today are covered by
    ``tests/integration/test_privacy.py``.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    for fmt in ("text", "json"):
        done = subprocess.run(
            [sys.executable, "-c", PROCESS_SCRIPT, fmt],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=root,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert "done" in done.stdout
        assert "unexpected error scoring instance 7" in out
        assert "a library warning about '<redacted>'" in out
        for canary in ("ZQXCANARY", "WIBBLE", "CANARY-ID-7781", "1970-01-01", "ZQXVIEW"):
            assert canary not in out.upper(), (fmt, canary, out)
