"""Interoperability with DCMTK (an independent implementation): echoscu and storescu
talk to the listener over a real association; the instances end up stored and queued."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import redis
from pydantic import SecretStr
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from sqlalchemy import Engine, text

from cxr_common.settings import ListenerSettings
from cxr_queue import make_celery
from dicom_listener.server import ListenerHandle, start_listener
from tests.conftest import SAMPLES, Services
from tests.peers import requires_peer

pytestmark = [
    pytest.mark.integration,
    requires_peer("dcmtk"),
]


@pytest.fixture
def listener(services: Services, engine: Engine, tmp_path: Path) -> Iterator[ListenerHandle]:
    client = redis.Redis.from_url(services.broker_url)
    client.delete(services.queue_name)
    settings = ListenerSettings(
        database_url=SecretStr(services.database_url),
        broker_url=SecretStr(services.broker_url),
        queue_name=services.queue_name,
        data_dir=tmp_path,
        storage_uri=(tmp_path / "instances").as_uri(),
        dicom_host="127.0.0.1",
        dicom_port=0,
        allowed_calling_ae_titles="DCMTK_SCU",
    )
    handle = start_listener(settings, engine, make_celery(services.broker_url, services.queue_name))
    yield handle
    handle.shutdown()
    client.delete(services.queue_name)
    client.close()


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_echoscu_gets_an_answer(listener: ListenerHandle) -> None:
    done = _run(
        ["echoscu", "-aet", "DCMTK_SCU", "-aec", "CXR_TRIAGE", "127.0.0.1", str(listener.port)]
    )
    assert done.returncode == 0, done.stderr


def test_echoscu_from_an_unlisted_ae_title_is_rejected(listener: ListenerHandle) -> None:
    done = _run(
        ["echoscu", "-aet", "STRANGER", "-aec", "CXR_TRIAGE", "127.0.0.1", str(listener.port)]
    )
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stdout + done.stderr


#: storescu proposes uncompressed syntaxes only unless told which compressed one to propose
#: (one per run), and it cannot decompress JPEG to fall back: so send each group with its
#: own option, as a site would (or with a storescu --config-file profile).
STORESCU_PROPOSE = {
    str(JPEGBaseline8Bit): "--propose-jpeg8",
    str(JPEGExtended12Bit): "--propose-jpeg12",
    str(JPEGLosslessSV1): "--propose-lossless",
    str(JPEG2000Lossless): "--propose-j2k-lossless",
    str(JPEG2000): "--propose-j2k-lossy",
    str(JPEGLSLossless): "--propose-jls-lossless",
    str(JPEGLSNearLossless): "--propose-jls-lossy",
    str(RLELossless): "--propose-rle",
    str(DeflatedExplicitVRLittleEndian): "--propose-deflated",
}


def test_storescu_sends_the_samples(
    listener: ListenerHandle, engine: Engine, services: Services
) -> None:
    files = sorted(SAMPLES.rglob("*.dcm"))
    assert files, "the bundled samples are missing"
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        syntax = str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups[STORESCU_PROPOSE.get(syntax, "--propose-uncompr")].append(f)
    assert len(groups) >= 3  # uncompressed, JPEG and JPEG 2000 at least
    for option, group in groups.items():
        done = _run(
            [
                "storescu",
                "-v",
                option,
                "-aet",
                "DCMTK_SCU",
                "-aec",
                "CXR_TRIAGE",
                "127.0.0.1",
                str(listener.port),
                *map(str, group),
            ]
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert output.count("Received Store Response (Success)") == len(group), output
        conversions = re.findall(r"Converting transfer syntax: (.+?) -> (.+)", output)
        assert all(a.strip() == b.strip() for a, b in conversions), conversions  # as stored
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT sop_instance_uid, status FROM instances")).all()
    expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert {r.sop_instance_uid for r in rows} == expected
    assert {r.status for r in rows} == {"queued"}
    assert redis.Redis.from_url(services.broker_url).llen(services.queue_name) == len(files)
