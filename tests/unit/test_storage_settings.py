"""Storage keys, atomic writes and settings parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_common.errors import ConfigurationError, StorageError
from cxr_common.settings import (
    ListenerSettings,
    WorkerSettings,
    normalise_database_url,
    resolve_batching,
)
from cxr_common.storage import instance_key, open_storage, read_instance, sanitise_uid


def test_uids_are_sanitised_before_becoming_paths() -> None:
    assert sanitise_uid(" 1.2.840.10008\x00") == "1.2.840.10008"
    for bad in ["../../etc/passwd", "1.2/3", "", "1." + "2" * 70, "abc"]:
        with pytest.raises(ValueError, match="UID"):
            sanitise_uid(bad)
    assert instance_key("1.2.3", "1.2.3.4") == "1.2.3/1.2.3.4.dcm"


def test_put_file_moves_a_staged_file_into_place_readable_by_uri(tmp_path: Path) -> None:
    storage = open_storage((tmp_path / "store").as_uri())
    key = instance_key("1.2", "1.2.3")
    staged = storage.staging_dir() / "incoming.part"
    staged.write_bytes(b"DICM-bytes")
    assert not storage.exists(key)
    storage.put_file(key, staged)
    assert storage.exists(key)
    assert storage.uri(key).startswith("file://")
    assert read_instance(storage.uri(key)) == b"DICM-bytes"
    assert not list(storage.staging_dir().iterdir())
    storage.delete(key)
    assert not storage.exists(key)
    storage.delete(key)  # deleting what is not there is no error
    with pytest.raises(StorageError, match="missing"):
        read_instance(storage.uri(key))


def test_missing_instance_and_unknown_scheme_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="missing"):
        read_instance((tmp_path / "nope.dcm").as_uri())
    with pytest.raises(ConfigurationError, match="not supported"):
        open_storage("s3://bucket/instances")


def test_storage_refuses_keys_that_escape_its_root(tmp_path: Path) -> None:
    storage = open_storage((tmp_path / "store").as_uri())
    with pytest.raises(StorageError, match="escapes"):
        storage.put_file("../outside.dcm", storage.staging_dir() / "x.part")
    with pytest.raises(StorageError, match="escapes"):
        storage.uri("../../etc/passwd")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_AE_TITLE", "HOSP_CXR")
    monkeypatch.setenv("CXR_DICOM_PORT", "104")
    monkeypatch.setenv("CXR_ALLOWED_CALLING_AE_TITLES", "MODALITY1, PACS ,")
    monkeypatch.setenv("CXR_BATCH_MAX_SIZE", "16")
    listener = ListenerSettings()
    assert (listener.ae_title, listener.dicom_port) == ("HOSP_CXR", 104)
    assert listener.allowed_calling_ae_titles == ["MODALITY1", "PACS"]
    assert WorkerSettings().batch_max_size == 16
    assert resolve_batching(WorkerSettings(), "cpu") == (16, 32)


def test_batching_defaults_follow_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_BATCH_MAX_SIZE", raising=False)
    monkeypatch.delenv("CXR_CONCURRENCY", raising=False)
    assert resolve_batching(WorkerSettings(), "cpu") == (4, 8)
    assert resolve_batching(WorkerSettings(), "cuda") == (16, 32)
    monkeypatch.setenv("CXR_CONCURRENCY", "3")
    assert resolve_batching(WorkerSettings(), "cpu") == (4, 3)


def test_missing_urls_say_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="CXR_DATABASE_URL"):
        ListenerSettings().database_url_value()


def test_database_urls_use_psycopg3() -> None:
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_invalid_ae_title_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_AE_TITLE", "WAY_TOO_LONG_AE_TITLE_X")
    with pytest.raises(ValueError, match="16"):
        ListenerSettings()


def test_worker_torch_threads_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydantic
    import torch

    from worker.app import apply_torch_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("CXR_TORCH_THREADS", raising=False)
        assert apply_torch_threads(WorkerSettings()) == before  # unset: torch's default stays
        monkeypatch.setenv("CXR_TORCH_THREADS", "1")
        assert apply_torch_threads(WorkerSettings()) == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("CXR_TORCH_THREADS", "0")
        with pytest.raises(pydantic.ValidationError, match="torch_threads"):
            WorkerSettings()
    finally:
        torch.set_num_threads(before)
