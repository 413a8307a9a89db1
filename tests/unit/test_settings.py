"""Settings: the AE allow-list, typed service URLs, the task time limit's bound, validated
overrides, the environment handed to child processes, and the CLI's answer to bad ones."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from cxr_common.errors import ConfigurationError
from cxr_common.lifecycle import stop_on_signals
from cxr_common.settings import (
    BROKER_VISIBILITY_TIMEOUT_S,
    CommonSettings,
    ListenerSettings,
    SchedulerSettings,
    SupervisorSettings,
    WebSettings,
    WorkerSettings,
    default_listener_processes,
)
from cxr_queue import make_celery
from cxr_triage.cli import main
from cxr_triage.processes import settings_env

PASSWORD = "s3cret-pw"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CXR_"):
            monkeypatch.delenv(name)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``main`` configures the root logger; give pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level


def test_allow_list_is_a_comma_separated_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ListenerSettings().allowed_calling_ae_titles == []
    monkeypatch.setenv("CXR_ALLOWED_CALLING_AE_TITLES", " PACS, MODALITY1 ,,PACS")
    assert ListenerSettings().allowed_calling_ae_titles == ["MODALITY1", "PACS"]
    monkeypatch.setenv("CXR_ALLOWED_CALLING_AE_TITLES", "")
    assert ListenerSettings().allowed_calling_ae_titles == []


def test_allow_list_refuses_what_is_not_an_ae_title(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_ALLOWED_CALLING_AE_TITLES", "PACS,SEVENTEEN_CHARS_XX")
    with pytest.raises(ValidationError, match="SEVENTEEN_CHARS_XX.*1-16 characters"):
        ListenerSettings()


def test_service_urls_are_typed_normalised_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CXR_DATABASE_URL", f"postgresql://cxr:{PASSWORD}@db:5432/cxr")
    monkeypatch.setenv("CXR_BROKER_URL", f"redis://:{PASSWORD}@redis:6379/0")
    settings = CommonSettings()
    assert settings.database_url_value() == f"postgresql+psycopg://cxr:{PASSWORD}@db:5432/cxr"
    assert settings.broker_url_value() == f"redis://:{PASSWORD}@redis:6379/0"
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump())
    # what the embedded Postgres hands out: a Unix socket folder, psycopg driver
    embedded = "postgresql+psycopg://postgres:@/postgres?host=/data/embedded/postgres"
    assert CommonSettings(database_url=embedded).database_url_value() == embedded
    with pytest.raises(ValidationError, match="empty host"):
        CommonSettings(database_url="postgresql://postgres@/postgres")


@pytest.mark.parametrize(
    ("name", "url", "expected"),
    [
        ("database_url", f"mysql://cxr:{PASSWORD}@db/cxr", "not a Postgres URL"),
        ("database_url", f"cxr:{PASSWORD}@db/cxr", "not a Postgres URL"),
        ("broker_url", f"amqp://cxr:{PASSWORD}@mq//", "not a Redis URL"),
    ],
)
def test_a_wrong_service_url_is_refused_without_echoing_it(
    name: str, url: str, expected: str
) -> None:
    with pytest.raises(ValidationError, match=expected) as caught:
        CommonSettings(**{name: url})
    assert PASSWORD not in str(caught.value)


def test_task_time_limit_must_stay_below_the_brokers_visibility_timeout() -> None:
    # the one number the broker is configured with
    app = make_celery("redis://127.0.0.1:1/0")
    assert app.conf.broker_transport_options["visibility_timeout"] == BROKER_VISIBILITY_TIMEOUT_S
    assert WorkerSettings(task_time_limit_s=BROKER_VISIBILITY_TIMEOUT_S - 1).task_time_limit_s
    with pytest.raises(ValidationError, match="not below the broker's visibility timeout"):
        WorkerSettings(task_time_limit_s=BROKER_VISIBILITY_TIMEOUT_S)


def test_overrides_are_validated_copies_that_do_not_reread_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CXR_BATCH_MAX_SIZE", "8")
    settings = WorkerSettings()
    monkeypatch.setenv("CXR_DEVICE", "cuda:3")  # set after the settings were built
    copy = settings.with_overrides(batch_max_size=32, database_url="postgresql://u@h/db")
    assert (copy.batch_max_size, copy.device) == (32, None)
    assert copy.database_url_value() == "postgresql+psycopg://u@h/db"
    assert (settings.batch_max_size, settings.database_url) == (8, None)
    with pytest.raises(ConfigurationError, match="CXR_BATCH_MAX_SIZE"):
        settings.with_overrides(batch_max_size=0)
    with pytest.raises(ConfigurationError, match="CXR_TASK_TIME_LIMIT_S"):
        settings.with_overrides(task_time_limit_s=BROKER_VISIBILITY_TIMEOUT_S)
    with pytest.raises(TypeError, match="web_port"):
        settings.with_overrides(web_port=80)


def test_child_environment_gives_children_the_same_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = SupervisorSettings(
        database_url=f"postgresql://cxr:{PASSWORD}@db/cxr",
        broker_url="redis://127.0.0.1:6380/0",
        dicom_port=104,
        allowed_calling_ae_titles="PACS,MODALITY1",
        reconcile_interval_s=5.0,
    )
    names = ["database_url", "broker_url", "dicom_port", "allowed_calling_ae_titles"]
    env = settings_env(settings, [*names, "model_dir", "reconcile_interval_s"])
    assert "CXR_MODEL_DIR" not in env  # unset stays unset
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = ListenerSettings()
    for name in names:
        assert getattr(child, name) == getattr(settings, name), name
    scheduler = SchedulerSettings()
    assert scheduler.reconcile_interval_s == settings.reconcile_interval_s == 5.0


def test_bad_settings_end_the_command_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CXR_DATABASE_URL", f"mysql://cxr:{PASSWORD}@db/cxr")
    monkeypatch.setenv("CXR_WEB_PORT", "80000")
    assert main(["web"]) == 2
    err = capsys.readouterr().err
    assert "CXR_DATABASE_URL: not a Postgres URL" in err
    assert "CXR_WEB_PORT" in err
    assert PASSWORD not in err


def test_a_bad_command_line_override_is_refused(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["work", "--batch-size", "0"]) == 2
    assert "CXR_BATCH_MAX_SIZE" in capsys.readouterr().err


def test_several_listener_processes_need_a_fixed_port(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ListenerSettings().listener_processes is None  # unset: one per core
    assert ListenerSettings().resolved_listener_processes == default_listener_processes()
    assert ListenerSettings(dicom_port=0).resolved_listener_processes == 1
    assert ListenerSettings(listener_processes=4, dicom_port=11112).listener_processes == 4
    with pytest.raises(ValidationError, match="needs a fixed CXR_DICOM_PORT"):
        ListenerSettings(listener_processes=2, dicom_port=0)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ListenerSettings(listener_processes=0)
    monkeypatch.setenv("CXR_DICOM_PORT", "0")
    assert main(["listen", "--processes", "2"]) == 2
    err = capsys.readouterr().err
    assert "CXR_LISTENER_PROCESSES=2 needs a fixed CXR_DICOM_PORT" in err
    monkeypatch.setenv("CXR_LISTENER_PROCESSES", "3")
    assert main(["listen"]) == 2
    assert "CXR_LISTENER_PROCESSES=3 needs a fixed CXR_DICOM_PORT" in capsys.readouterr().err
    monkeypatch.delenv("CXR_LISTENER_PROCESSES")
    # refused before anything (embedded services included) starts
    assert main(["up", "--listener-processes", "2"]) == 2
    assert "CXR_LISTENER_PROCESSES=2 needs a fixed CXR_DICOM_PORT" in capsys.readouterr().err


def test_stop_on_signals_sets_the_event_and_restores_the_handlers() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stopped: list[bool] = []
    with stop_on_signals("the test", on_stop=lambda: stopped.append(True)) as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(10)
    assert stopped == [True]
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_web_tls_needs_both_files_and_trusted_hosts_add_to_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    monkeypatch.setenv("CXR_WEB_TLS_CERT", str(cert))
    with pytest.raises(ValidationError, match="CXR_WEB_TLS_KEY"):
        WebSettings()
    monkeypatch.setenv("CXR_WEB_TLS_KEY", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match="not a readable file"):
        WebSettings()
    (tmp_path / "missing.pem").write_text("x")
    assert WebSettings().tls
    monkeypatch.setenv("CXR_WEB_TRUSTED_HOSTS", "worklist.example.org, ,pacs-gw")
    monkeypatch.setenv("CXR_WEB_HOST", "10.0.0.5")
    assert WebSettings().trusted_hosts() == [
        "localhost",
        "127.0.0.1",
        "::1",
        "10.0.0.5",
        "worklist.example.org",
        "pacs-gw",
    ]
    monkeypatch.setenv("CXR_WEB_HOST", "0.0.0.0")
    assert "0.0.0.0" not in WebSettings().trusted_hosts()
    monkeypatch.setenv("CXR_WEB_TLS_CERT", "")
    monkeypatch.setenv("CXR_WEB_TLS_KEY", "")
    assert not WebSettings().tls  # compose passes empty values for "no TLS"
