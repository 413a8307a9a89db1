"""DICOM TLS both ways (issue 20): the results sender speaks TLS (CA-checked, with a client
certificate), and the listener ties each client certificate to the calling AE titles it
may use. Real TLS on loopback, throwaway certificates made here (``cryptography``)."""

from __future__ import annotations

import hashlib
import logging
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Engine

from cxr_common.settings import ListenerSettings, ResultSettings
from cxr_results import Destination, StoreItem, Timeouts, client_tls_context, store
from cxr_results.errors import AssociationError
from tests.conftest import StartListener
from tests.dicom_factory import make_dataset
from tests.integration.test_listener_boundary import Pki, _make_pki
from tests.listener_support import instance_count

pytestmark = pytest.mark.integration

TIMEOUTS = Timeouts(connection_s=10, acse_s=20, dimse_s=30, network_s=30)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return _make_pki(folder)


def _fingerprint(cert: Path) -> str:
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _send(port: int, calling: str, tls: ssl.SSLContext | None, seed: int = 0) -> bool:
    """One CR image to the listener as ``calling``; True when stored."""
    ds = make_dataset(sop_uid=f"1.2.826.0.1.3680043.10.1234.{seed + 1}")
    outcomes = store(
        Destination("CXR_TRIAGE", "localhost", port),
        [StoreItem.of_dataset(ds)],
        calling_ae_title=calling,
        timeouts=TIMEOUTS,
        tls=tls,
    )
    return all(o.stored for o in outcomes)


def _tls_listener(start_listener: StartListener, pki: Pki, binding: dict[str, list[str]]) -> int:
    handle = start_listener(
        dicom_tls_cert=pki.server_cert,
        dicom_tls_key=pki.server_key,
        dicom_tls_ca=pki.ca,
        dicom_tls_client_ae_titles=binding,
    )
    return handle.port


def test_sender_stores_over_tls_as_the_ae_title_its_certificate_is_bound_to(
    start_listener: StartListener, pki: Pki, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    port = _tls_listener(start_listener, pki, {"modality": ["MODALITY_A"]})
    tls = client_tls_context(pki.ca, pki.client_cert, pki.client_key)
    assert _send(port, "MODALITY_A", tls)
    assert instance_count(engine) == 1

    # the certificate of MODALITY_A calling as another AE title: A-ASSOCIATE-RJ (1, 1, 3)
    with (
        caplog.at_level(logging.WARNING, logger="dicom_listener.boundary"),
        pytest.raises(AssociationError, match="rejected") as caught,
    ):
        _send(port, "PACS_B", tls, seed=1)
    assert "Calling AE title not recognised" in caught.value.reason
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals, "the listener logs why it refused"
    assert "'PACS_B'" in refusals[0]
    assert "MODALITY_A" in refusals[0]
    assert "modality" in refusals[0]  # the certificate's CN
    assert instance_count(engine) == 1


def test_a_certificate_bound_by_fingerprint_and_one_bound_to_nothing(
    start_listener: StartListener, pki: Pki, engine: Engine
) -> None:
    tls = client_tls_context(pki.ca, pki.client_cert, pki.client_key)
    port = _tls_listener(start_listener, pki, {_fingerprint(pki.client_cert): ["BY_PRINT"]})
    assert _send(port, "BY_PRINT", tls)
    # a CA-signed certificate the binding does not name may call as no AE title
    other = _tls_listener(start_listener, pki, {"someone-else": ["MODALITY_A"]})
    with pytest.raises(AssociationError, match="rejected"):
        _send(other, "MODALITY_A", tls, seed=1)
    assert instance_count(engine) == 1


def test_sender_refuses_a_destination_it_cannot_verify_and_sends_nothing_in_clear(
    start_listener: StartListener, pki: Pki, engine: Engine, tmp_path: Path
) -> None:
    port = _tls_listener(start_listener, pki, {"modality": ["MODALITY_A"]})
    # a CA that did not sign the listener's certificate: the handshake fails
    (tmp_path / "stranger").mkdir()
    stranger = _make_pki(tmp_path / "stranger")
    wrong_ca = client_tls_context(stranger.ca, pki.client_cert, pki.client_key)
    with pytest.raises(AssociationError):
        _send(port, "MODALITY_A", wrong_ca)
    # no client certificate: the listener (CXR_DICOM_TLS_CA) refuses the handshake
    with pytest.raises(AssociationError):
        _send(port, "MODALITY_A", client_tls_context(pki.ca))
    # plain DICOM to the TLS port: nothing is stored
    with pytest.raises(AssociationError):
        _send(port, "MODALITY_A", None)
    assert instance_count(engine) == 0


def test_tls_settings_of_sender_and_binding_are_checked(pki: Pki) -> None:
    settings = ResultSettings(
        result_tls_ca=pki.ca, result_tls_cert=pki.client_cert, result_tls_key=pki.client_key
    )
    assert settings.result_tls_ca == pki.ca
    with pytest.raises(ValueError, match="CXR_RESULT_TLS_KEY"):
        ResultSettings(result_tls_ca=pki.ca, result_tls_cert=pki.client_cert)
    with pytest.raises(ValueError, match="needs CXR_RESULT_TLS_CA"):
        ResultSettings(result_tls_cert=pki.client_cert, result_tls_key=pki.client_key)
    with pytest.raises(ValueError, match="not a readable file"):
        ResultSettings(result_tls_ca=Path("/nowhere/ca.pem"))
    with pytest.raises(ValueError, match="needs client certificates"):
        ListenerSettings(
            dicom_tls_cert=pki.server_cert,
            dicom_tls_key=pki.server_key,
            dicom_tls_client_ae_titles={"modality": ["MODALITY_A"]},
        )
    with pytest.raises(ValueError, match="1-16 characters"):
        ListenerSettings(
            dicom_tls_cert=pki.server_cert,
            dicom_tls_key=pki.server_key,
            dicom_tls_ca=pki.ca,
            dicom_tls_client_ae_titles={"modality": ["A_VERY_LONG_AE_TITLE_X"]},
        )
