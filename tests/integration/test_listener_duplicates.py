"""Same SOP Instance UID, different content (issue 12, defect 4), over real associations.

Decision: the first copy stored wins. A resend of identical content is success without a
second row or job (as before); different content under a known SOP Instance UID is
refused with 0x0111 "Duplicate SOP Instance" and an Error Comment that says why, the
stored file, its row and its prediction stay untouched, no study row or file is created
for another Study Instance UID, and an ``instance_conflicts`` row records the event.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import redis
from pydicom.dataset import Dataset
from sqlalchemy import Engine, text

from cxr_db.conflicts import store as conflicts
from cxr_db.instances import writes as repo
from dicom_listener.handlers import content_sha256
from dicom_listener.server import ListenerHandle
from dicom_listener.statuses import StoreStatus
from tests.conftest import Services, StartListener
from tests.dicom_factory import TEST_ROOT, chest_like, make_dataset
from tests.listener_support import (
    files_under,
    instance_count,
    store_files,
    study_count,
)

pytestmark = pytest.mark.integration

DIFFERENT = "SOP Instance UID already stored with different content"


@pytest.fixture
def start(start_listener: StartListener) -> StartListener:
    """In-process listeners on free ports (tests/conftest.py's ``start_listener``)."""
    return start_listener


@pytest.fixture
def queue(services: Services) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.broker_url)
    client.delete(services.queue_name)
    yield client
    client.delete(services.queue_name)
    client.close()


def _jobs(queue: redis.Redis, name: str) -> list[int]:
    ids = []
    for raw in queue.lrange(name, 0, -1):
        _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(int(kwargs["job"]["instance_id"]))
    return sorted(ids)


def _row(engine: Engine) -> dict[str, object]:
    with engine.begin() as conn:
        return dict(
            conn.execute(
                text(
                    "SELECT i.id, i.status, i.storage_uri, i.content_sha256, i.size_bytes, "
                    "s.study_instance_uid FROM instances i JOIN studies s ON s.id = i.study_id"
                )
            )
            .mappings()
            .one()
        )


def _path(uri: object) -> Path:
    return Path(unquote(urlparse(str(uri)).path))


def _second_version(ds: Dataset, *, study_uid: str | None = None) -> Dataset:
    """The same SOP Instance UID with other pixels (and maybe another study)."""
    other = make_dataset(
        np.flipud(chest_like(seed=7)),
        sop_uid=str(ds.SOPInstanceUID),
        study_uid=study_uid or str(ds.StudyInstanceUID),
        accession=str(ds.AccessionNumber),
    )
    other.SeriesInstanceUID = ds.SeriesInstanceUID
    return other


def _prediction() -> repo.PredictionRecord:
    return repo.PredictionRecord(
        model_name="test",
        model_version="v1",
        weights_sha256="0" * 64,
        calibration_version=None,
        logit=1.5,
        probability=0.82,
        threshold=0.5,
        flagged=True,
        heatmap_png=b"\x89PNG",
        device="cpu",
        batch_size=1,
        decode_ms=1.0,
        inference_ms=1.0,
        worker_id="w",
    )


def test_identical_resend_is_success_without_a_second_job(
    start: Callable[..., ListenerHandle], engine: Engine, queue: redis.Redis, services: Services
) -> None:
    handle = start()
    ds = make_dataset(accession="DUP00001")
    assert [a.status for a in store_files(handle.port, [ds, ds]) if a] == [0, 0]
    row = _row(engine)
    assert row["content_sha256"]
    assert len(str(row["content_sha256"])) == 64
    assert _jobs(queue, services.queue_name) == [row["id"]]
    assert conflicts.conflicts(engine) == []


def test_different_content_same_study_is_refused_and_changes_nothing(
    start: Callable[..., ListenerHandle],
    engine: Engine,
    queue: redis.Redis,
    services: Services,
    tmp_path: Path,
) -> None:
    handle = start()
    first = make_dataset(accession="DUP00002")
    (answer,) = store_files(handle.port, [first])
    assert answer is not None
    assert answer.status == StoreStatus.SUCCESS
    row = _row(engine)
    stored = _path(row["storage_uri"])
    stored_bytes = stored.read_bytes()
    repo.record_prediction(engine, int(str(row["id"])), _prediction())  # scored: done

    (answer,) = store_files(handle.port, [_second_version(first)], calling_ae="MODALITY7")
    assert answer is not None
    assert answer.status == StoreStatus.DUPLICATE_SOP_INSTANCE == 0x0111
    assert answer.error_comment == DIFFERENT
    assert stored.read_bytes() == stored_bytes  # the scored pixels are still the file
    after = _row(engine)
    assert after == {**row, "status": "done"}
    with engine.begin() as conn:
        probability = conn.execute(text("SELECT probability FROM predictions")).scalar_one()
    assert probability == pytest.approx(0.82)
    assert _jobs(queue, services.queue_name) == [row["id"]]  # no second job
    (event,) = conflicts.conflicts(engine)
    assert event.instance_id == row["id"]
    assert event.sop_instance_uid == str(first.SOPInstanceUID)
    assert event.stored_content_sha256 == row["content_sha256"]
    assert event.received_content_sha256 not in (None, row["content_sha256"])
    assert event.calling_ae_title == "MODALITY7"
    assert event.peer_address == "127.0.0.1"
    assert [p.name for p in files_under(tmp_path / "instances")] == [stored.name]


def test_different_content_under_another_study_leaves_no_study_row_and_no_file(
    start: Callable[..., ListenerHandle], engine: Engine, tmp_path: Path
) -> None:
    handle = start()
    first = make_dataset(accession="DUP00003")
    store_files(handle.port, [first])
    other_study = TEST_ROOT + "99.1"
    (answer,) = store_files(handle.port, [_second_version(first, study_uid=other_study)])
    assert answer is not None
    assert answer.status == StoreStatus.DUPLICATE_SOP_INSTANCE
    assert study_count(engine) == 1
    assert instance_count(engine) == 1
    assert not (tmp_path / "instances" / other_study).exists()
    assert len(files_under(tmp_path / "instances")) == 1
    (event,) = conflicts.conflicts(engine)
    assert event.received_study_instance_uid == other_study


def test_rows_recorded_before_content_hashes_compare_with_the_stored_file(
    start: Callable[..., ListenerHandle], engine: Engine
) -> None:
    handle = start()
    first = make_dataset(accession="DUP00004")
    store_files(handle.port, [first])
    with engine.begin() as conn:  # as if recorded before migration 0007
        conn.execute(text("UPDATE instances SET content_sha256 = NULL"))
    assert [a.status for a in store_files(handle.port, [first]) if a] == [StoreStatus.SUCCESS]
    (answer,) = store_files(handle.port, [_second_version(first)])
    assert answer is not None
    assert answer.status == StoreStatus.DUPLICATE_SOP_INSTANCE
    assert instance_count(engine) == 1


def test_concurrent_sends_of_two_versions_store_exactly_one_consistently(
    start: Callable[..., ListenerHandle], engine: Engine, tmp_path: Path
) -> None:
    """Two associations (as from two listeners) race with two versions of one UID: one is
    stored, the other refused; the stored file is the one the row's hash describes."""
    handle = start()
    first = make_dataset(accession="DUP00005")
    versions = [first, _second_version(first)]
    answers: dict[int, int] = {}
    barrier = threading.Barrier(2)

    def send(i: int) -> None:
        barrier.wait()
        (answer,) = store_files(handle.port, [versions[i]])
        answers[i] = answer.status if answer else -1

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(answers.values()) == [StoreStatus.SUCCESS, StoreStatus.DUPLICATE_SOP_INSTANCE]
    row = _row(engine)
    stored = _path(row["storage_uri"])
    assert content_sha256(stored, str(first.file_meta.TransferSyntaxUID)) == row["content_sha256"]
    assert len(files_under(tmp_path / "instances")) == 1
