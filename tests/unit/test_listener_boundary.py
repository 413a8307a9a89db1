"""Pure parts of the listener boundary: peer networks, Error Comments, content hashes,
listener settings."""

from __future__ import annotations

import io
import ipaddress
from pathlib import Path

import pytest

from cxr_common.settings import ListenerSettings
from dicom_listener.boundary import PeerPolicy
from dicom_listener.handlers import content_sha256, error_comment, status_dataset
from dicom_listener.statuses import StoreStatus
from tests.dicom_factory import make_dataset, write


def test_peer_networks() -> None:
    policy = PeerPolicy(
        allowed_networks=(
            ipaddress.ip_network("10.20.0.0/16"),
            ipaddress.ip_network("2001:db8::/32"),
        )
    )
    assert policy.allows("10.20.3.4")
    assert policy.allows("::ffff:10.20.3.4")  # IPv4-mapped
    assert policy.allows("2001:db8::1")
    assert not policy.allows("10.21.0.1")
    assert not policy.allows("127.0.0.1")
    assert not policy.allows("not an address")
    assert PeerPolicy().allows("203.0.113.9")  # no list: anyone


def test_error_comment_is_a_short_ascii_lo() -> None:
    assert error_comment("a\\b") == "a/b"
    assert error_comment("é" * 10) == "?" * 10
    long = error_comment("x" * 100)
    assert len(long) == 64
    assert long.endswith("...")
    ds = status_dataset(StoreStatus.PIXEL_DATA_LENGTH, "Pixel Data truncated")
    assert (ds.Status, ds.ErrorComment) == (0xC220, "Pixel Data truncated")
    assert "ErrorComment" not in status_dataset(StoreStatus.SUCCESS)


def test_content_hash_ignores_file_meta_but_not_the_data_set(tmp_path: Path) -> None:
    ds = make_dataset(accession="HASH0001")
    first = write(ds, tmp_path / "a.dcm")
    ds.file_meta.ImplementationVersionName = "OTHER_WRITER"  # another File Meta
    second = write(ds, tmp_path / "b.dcm")
    assert first.read_bytes() != second.read_bytes()
    syntax = str(ds.file_meta.TransferSyntaxUID)
    assert content_sha256(first, syntax) == content_sha256(second, syntax)
    assert content_sha256(io.BytesIO(first.read_bytes()), syntax) == content_sha256(first, syntax)
    assert content_sha256(first, syntax) != content_sha256(first, "1.2.840.10008.1.2")
    ds.AccessionNumber = "HASH0002"
    assert content_sha256(write(ds, tmp_path / "c.dcm"), syntax) != content_sha256(first, syntax)


def test_listener_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_ALLOWED_PEER_NETWORKS", "10.0.0.0/8, 192.168.1.7")
    monkeypatch.setenv("CXR_MAX_ROWS", "9000")
    monkeypatch.setenv("CXR_ENVIRONMENT", "production")
    settings = ListenerSettings()
    assert [str(n) for n in settings.allowed_peer_networks] == ["10.0.0.0/8", "192.168.1.7/32"]
    assert settings.decode_limits().max_rows == 9000
    assert not settings.accept_any_called_ae_title
    monkeypatch.setenv("CXR_ALLOWED_PEER_NETWORKS", "")
    with pytest.raises(ValueError, match="needs an allow-list"):
        ListenerSettings()
    monkeypatch.setenv("CXR_ACCEPT_ANY_PEER", "true")
    assert ListenerSettings().accept_any_peer
    monkeypatch.setenv("CXR_ALLOWED_PEER_NETWORKS", "10.0.0.300/8")
    with pytest.raises(ValueError, match="allowed_peer_networks"):
        ListenerSettings()
