"""STOW-RS in: ``POST /dicomweb/studies`` on a real uvicorn server, real Postgres and Redis,
stored by a client nobody here wrote (PyPI ``dicomweb-client``) and by hand-made requests
for each bad input. Each case checks the PS3.18 answer (HTTP status, ReferencedSOPSequence,
FailedSOPSequence with FailureReason) and what the ingest core did (rows, scoring jobs,
conflicts, nothing left in the staging folder)."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import redis
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage
from requests.exceptions import HTTPError
from sqlalchemy import Engine, text

from cxr_common.storage import FileStorage
from cxr_db.accounts.tables import Role
from cxr_ingest import Ingest
from cxr_queue import lane_queues, make_celery
from tests.conftest import Services
from tests.dicom_factory import chest_like, make_dataset
from tests.web_server import add_token, add_user, reset_accounts, serve, sign_in, web_config
from worklist.routes.dicomweb import FailureReason

pytestmark = pytest.mark.integration

UID_ROOT = "1.2.826.0.1.3680043.10.999"
BOUNDARY = "cxr-test-boundary-7d1f"
CT = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture
def db(engine: Engine) -> Engine:
    return reset_accounts(engine)


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    return tmp_path / "instances"


@pytest.fixture
def rules(services: Services, db: Engine, storage_root: Path) -> Ingest:
    return Ingest(
        db,
        FileStorage(storage_root),
        make_celery(services.broker_url, services.queue_name),
        services.queue_name,
        uid_root=UID_ROOT,
    )


@pytest.fixture
def base_url(db: Engine, rules: Ingest) -> Iterator[str]:
    with serve(db, web_config(stow_max_bytes=8 * 1024**2, stow_max_instances=5), stow=rules) as u:
        yield u


@pytest.fixture
def sender(db: Engine) -> str:
    return add_token(db, "modality-gw", Role.SENDER)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _queued(services: Services) -> int:
    client = redis.Redis.from_url(services.broker_url)
    try:
        return sum(int(client.llen(q)) for q in lane_queues(services.queue_name))
    finally:
        client.close()


def _rows(db: Engine) -> dict[str, str]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT sop_instance_uid, status FROM instances")).all()
    return {r.sop_instance_uid: r.status for r in rows}


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _body(*parts: bytes | tuple[str, bytes]) -> bytes:
    out = b""
    for part in parts:
        kind, data = part if isinstance(part, tuple) else ("application/dicom", part)
        out += f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(answer.get(tag, {}).get("Value", []))


def _uids(items: list[dict[str, Any]]) -> list[str | None]:
    return [(i["00081155"].get("Value") or [None])[0] for i in items]


def _reasons(answer: dict[str, Any]) -> list[int]:
    return [i["00081197"]["Value"][0] for i in _items(answer, "00081198")]


def _staging_empty(root: Path) -> bool:
    staging = root / ".staging"
    return not staging.exists() or not any(staging.iterdir())


def test_dicomweb_client_stores_a_study_through_the_ingest_core(
    base_url: str, sender: str, db: Engine, services: Services, storage_root: Path
) -> None:
    study = pydicom.uid.generate_uid()
    first = make_dataset(chest_like(512, seed=1), study_uid=study)
    second = make_dataset(chest_like(512, seed=2), study_uid=study)
    client = DICOMwebClient(url=f"{base_url}/dicomweb", headers=_bearer(sender))
    # over a MB: dicomweb-client sends it chunked (no Content-Length): the streaming cap
    answer = client.store_instances([first, second], study_instance_uid=study)
    stored = {str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence}
    assert stored == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert "FailedSOPSequence" not in answer
    assert set(_rows(db)) == stored
    assert _queued(services) == 2  # enqueued after commit, like the listener
    assert _staging_empty(storage_root)
    # an identical resend is a success and no second job
    again = client.store_instances([first])
    assert [str(i.ReferencedSOPInstanceUID) for i in again.ReferencedSOPSequence] == [
        first.SOPInstanceUID
    ]
    assert _queued(services) == 2


def test_mixed_request_answers_202_with_each_failure_reason(
    base_url: str, sender: str, db: Engine, storage_root: Path
) -> None:
    good = make_dataset()
    mr = make_dataset(sop_class="1.2.840.10008.5.1.4.1.1.4", modality="MR")  # MR: not stored
    body = _body(
        _part10(good), b"\x00not dicom at all" * 20, _part10(mr), ("image/png", b"\x89PNG")
    )
    resp = httpx.post(
        f"{base_url}/dicomweb/studies",
        content=body,
        headers={**_bearer(sender), "Content-Type": CT},
        timeout=60,
    )
    assert resp.status_code == 202, resp.text
    assert resp.headers["content-type"] == "application/dicom+json"
    answer = resp.json()
    assert _uids(_items(answer, "00081199")) == [good.SOPInstanceUID]
    assert _reasons(answer) == [
        FailureReason.CANNOT_UNDERSTAND,
        FailureReason.SOP_CLASS_NOT_SUPPORTED,
        FailureReason.CANNOT_UNDERSTAND,
    ]
    assert _uids(_items(answer, "00081198"))[1] == mr.SOPInstanceUID
    warnings = resp.headers.get_list("warning")
    assert len(warnings) == 3
    assert all(w.startswith('299 cxr-triage "') for w in warnings)
    assert "image/png" in warnings[2]
    assert set(_rows(db)) == {good.SOPInstanceUID}
    assert _staging_empty(storage_root)


def test_conflicting_resend_is_409_and_recorded(base_url: str, sender: str, db: Engine) -> None:
    ds = make_dataset(chest_like(256, seed=3))
    headers = {**_bearer(sender), "Content-Type": CT}
    first = httpx.post(f"{base_url}/dicomweb/studies", content=_body(_part10(ds)), headers=headers)
    assert first.status_code == 200, first.text
    ds.PixelData = chest_like(256, seed=4).tobytes()  # same UIDs, other pixels
    resp = httpx.post(f"{base_url}/dicomweb/studies", content=_body(_part10(ds)), headers=headers)
    assert resp.status_code == 409, resp.text
    answer = resp.json()
    assert _reasons(answer) == [FailureReason.DUPLICATE_SOP_INSTANCE]
    assert "00081199" not in answer
    with db.connect() as conn:
        (peer,) = conn.execute(text("SELECT peer_address FROM instance_conflicts")).scalars()
    assert peer == "127.0.0.1"


def test_study_path_refuses_an_instance_of_another_study(
    base_url: str, sender: str, db: Engine
) -> None:
    study = pydicom.uid.generate_uid()
    mine = make_dataset(study_uid=study)
    other = make_dataset()
    headers = {**_bearer(sender), "Content-Type": CT}
    resp = httpx.post(
        f"{base_url}/dicomweb/studies/{study}",
        content=_body(_part10(mine), _part10(other)),
        headers=headers,
    )
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert _uids(_items(answer, "00081199")) == [mine.SOPInstanceUID]
    assert _uids(_items(answer, "00081198")) == [other.SOPInstanceUID]
    assert _reasons(answer) == [FailureReason.STUDY_INSTANCE_UID_MISMATCH]
    assert set(_rows(db)) == {mine.SOPInstanceUID}
    bad = httpx.post(
        f"{base_url}/dicomweb/studies/not-a-uid", content=_body(_part10(mine)), headers=headers
    )
    assert bad.status_code == 400
    assert "not a valid UID" in bad.json()["detail"]


def test_only_a_sender_token_stores_and_a_sender_reads_nothing(
    base_url: str, sender: str, db: Engine
) -> None:
    body = _body(_part10(make_dataset()))
    url = f"{base_url}/dicomweb/studies"
    anonymous = httpx.post(url, content=body, headers={"Content-Type": CT})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    for role in (Role.RADIOLOGIST, Role.ADMIN, Role.OPS):
        token = add_token(db, f"t-{role.value}", role)
        resp = httpx.post(url, content=body, headers={**_bearer(token), "Content-Type": CT})
        assert resp.status_code == 403, (role, resp.text)
        assert "sender" in resp.json()["detail"]
    add_user(db, "ann")
    with httpx.Client(base_url=base_url) as browser:
        assert sign_in(browser, "ann").status_code == 303
        signed_in = browser.post("/dicomweb/studies", content=body, headers={"Content-Type": CT})
        assert signed_in.status_code == 403
    assert _rows(db) == {}
    for path in ("/api/worklist", "/", "/admin/audit", "/api/audit", "/readyz", "/metrics"):
        resp = httpx.get(base_url + path, headers=_bearer(sender))
        assert resp.status_code == 403, (path, resp.status_code)
    # and a person cannot be a sender
    with pytest.raises(ValueError, match="API tokens only"):
        add_user(db, "gw", Role.SENDER)


@pytest.mark.parametrize(
    ("content_type", "body", "status", "words"),
    [
        ("application/dicom", b"\x00" * 200, 415, "multipart/related"),
        (
            f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
            b"",
            415,
            "application/dicom+json",
        ),
        ('multipart/related; type="application/dicom"', b"x", 400, "boundary"),
        (CT, f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nabc".encode(), 400, "ends"),
        (CT, b"no boundary anywhere in here", 400, "no part"),
        (CT, f"--{BOUNDARY}--\r\n".encode(), 400, "no part"),
        (CT, f"--{BOUNDARY}junk\r\n\r\nabc\r\n--{BOUNDARY}--".encode(), 400, "boundary"),
    ],
)
def test_malformed_requests_get_400_or_415_with_a_message(
    base_url: str,
    sender: str,
    db: Engine,
    storage_root: Path,
    content_type: str,
    body: bytes,
    status: int,
    words: str,
) -> None:
    resp = httpx.post(
        f"{base_url}/dicomweb/studies",
        content=body,
        headers={**_bearer(sender), "Content-Type": content_type},
    )
    assert resp.status_code == status, resp.text
    assert words in resp.json()["detail"]
    assert _rows(db) == {}
    assert _staging_empty(storage_root)


def test_request_size_is_bounded_before_and_while_reading(
    base_url: str, sender: str, db: Engine, storage_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{base_url}/dicomweb/studies"
    headers = {**_bearer(sender), "Content-Type": CT}
    big = b"\x00" * (9 * 1024**2)
    # announced too large: refused before the body is read
    declared = httpx.post(url, content=big, headers=headers, timeout=60)
    assert declared.status_code == 413
    assert "larger than 8388608 bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for _ in range(9):
            yield b"\x00" * 1024**2

    with caplog.at_level(logging.WARNING, logger="worklist.routes.dicomweb"):
        streamed = httpx.post(url, content=chunks(), headers=headers, timeout=60)
    assert streamed.status_code == 413
    assert "larger than" in streamed.json()["detail"]
    # too many parts (the limit is 5)
    many = httpx.post(
        url, content=_body(*[_part10(make_dataset()) for _ in range(6)]), headers=headers
    )
    assert many.status_code == 413
    assert "more than 5 parts" in many.json()["detail"]
    assert _rows(db) == {}
    assert _staging_empty(storage_root)


def test_stow_without_ingest_rules_answers_503(db: Engine, sender: str) -> None:
    with serve(db, web_config()) as url:
        resp = httpx.post(
            f"{url}/dicomweb/studies",
            content=_body(_part10(make_dataset())),
            headers={**_bearer(sender), "Content-Type": CT},
        )
    assert resp.status_code == 503
    assert "not enabled" in resp.json()["detail"]


def test_our_own_result_object_is_acknowledged_not_stored(
    base_url: str, sender: str, db: Engine
) -> None:
    # ours: under our UID root and of a class we create (a heatmap Secondary Capture)
    ds = make_dataset(
        sop_uid=f"{UID_ROOT}.{uuid.uuid4().int % 10**12}",
        sop_class=SecondaryCaptureImageStorage,
        modality="OT",
    )
    resp = httpx.post(
        f"{base_url}/dicomweb/studies",
        content=_body(_part10(ds)),
        headers={**_bearer(sender), "Content-Type": CT},
    )
    assert resp.status_code == 200, resp.text
    assert _uids(_items(resp.json(), "00081199")) == [ds.SOPInstanceUID]
    assert _rows(db) == {}


def test_dicomweb_client_sees_409_as_an_error(base_url: str, sender: str) -> None:
    ds = make_dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR: not stored
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    client = DICOMwebClient(url=f"{base_url}/dicomweb", headers=_bearer(sender))
    with pytest.raises(HTTPError, match="409"):
        client.store_instances([ds])
