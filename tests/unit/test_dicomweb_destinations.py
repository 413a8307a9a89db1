"""DICOMweb result destinations in CXR_RESULT_DESTINATIONS, and their credentials."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cxr_common.settings import ResultSettings
from cxr_results import (
    Destination,
    DestinationConfigError,
    DicomwebDestination,
    parse_destinations,
)


def test_urls_and_ae_titles_mix() -> None:
    parsed = parse_destinations(
        "PACS@pacs.example.org:104, https://PACS.example.org/dicom-web/ ,"
        "http://[fd00::7]:8042/dicom-web,http://10.0.0.7:8042"
    )
    assert parsed == (
        Destination("PACS", "pacs.example.org", 104),
        DicomwebDestination("https://pacs.example.org/dicom-web"),
        DicomwebDestination("http://[fd00::7]:8042/dicom-web"),
        DicomwebDestination("http://10.0.0.7:8042"),
    )
    assert parsed[1].studies_url == "https://pacs.example.org/dicom-web/studies"  # type: ignore[union-attr]
    assert str(parsed[1]) == "https://pacs.example.org/dicom-web"


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("https://user:s3cret-pw@pacs.example.org/dicom-web", "user name or password"),
        ("https://token@pacs.example.org/dicom-web", "user name or password"),
        ("ftp://pacs.example.org/x", "AE_TITLE@host:port"),
        ("https://pacs.example.org/dicom-web?key=abc", "no query or fragment"),
        ("https://pacs.example.org/dicom-web#x", "no query or fragment"),
        ("https://pacs.example.org:99999/dicom-web", "port"),
        ("https:///dicom-web", "host"),
        ("https://pacs example.org/dicom-web", "no spaces"),
        ("https://bad_host!/dicom-web", "not a host name"),
        ("https://pacs.example.org/" + "x" * 260, "at most 250"),
    ],
)
def test_bad_urls_are_refused_and_credentials_never_echoed(entry: str, words: str) -> None:
    with pytest.raises(DestinationConfigError, match=words) as caught:
        parse_destinations(entry)
    assert "s3cret-pw" not in str(caught.value)


def test_a_url_listed_twice_is_refused() -> None:
    with pytest.raises(DestinationConfigError, match="listed twice"):
        parse_destinations("https://pacs.example.org/dw,https://PACS.example.org/dw/")


def test_dicomweb_credentials_are_a_token_or_a_user_and_password() -> None:
    token = ResultSettings(result_dicomweb_token="t" * 20)
    assert token.result_dicomweb_token is not None
    assert "tttt" not in repr(token)
    basic = ResultSettings(result_dicomweb_username="cxr", result_dicomweb_password="pw-123")
    assert basic.result_dicomweb_username == "cxr"
    assert ResultSettings(result_dicomweb_token="").result_dicomweb_token is None
    with pytest.raises(ValidationError, match="USERNAME and CXR_RESULT_DICOMWEB_PASSWORD"):
        ResultSettings(result_dicomweb_username="cxr")
    with pytest.raises(ValidationError, match="not both"):
        ResultSettings(
            result_dicomweb_token="t" * 20,
            result_dicomweb_username="cxr",
            result_dicomweb_password="pw-123",
        )
