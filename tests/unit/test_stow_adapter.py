"""The STOW-RS adapter without a server: every refusal has its FailureReason, the PS3.18
status of a set of outcomes, and the streaming multipart reader on awkward chunkings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cxr_ingest import Disposition, Outcome, RefusalCode
from cxr_ingest.outcome import refused
from worklist.multipart import MultipartError, media_type, read_parts
from worklist.routes.dicomweb import (
    FAILURE_REASON_FOR_REFUSAL,
    FailureReason,
    part10_head,
    stow_response,
)


def test_every_refusal_code_has_a_failure_reason() -> None:
    assert set(FAILURE_REASON_FOR_REFUSAL) == set(RefusalCode)
    assert all(isinstance(v, FailureReason) for v in FAILURE_REASON_FOR_REFUSAL.values())
    # resources are the retryable ones: A7xx tells a STOW client to try again
    for code, reason in FAILURE_REASON_FOR_REFUSAL.items():
        assert (reason is FailureReason.OUT_OF_RESOURCES) == code.retryable, code


def _stored(uid: str) -> Outcome:
    return Outcome(Disposition.STORED, sop_instance_uid=uid, sop_class_uid="1.2.3")


def _failed(uid: str, code: RefusalCode) -> Outcome:
    return refused(code, "why", sop_instance_uid=uid, sop_class_uid="1.2.3")


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ([_stored("1.1"), Outcome(Disposition.DUPLICATE, sop_instance_uid="1.2")], 200),
        ([_stored("1.1"), _failed("1.2", RefusalCode.UNDECODABLE)], 202),
        ([_failed("1.2", RefusalCode.CONTENT_CONFLICT)], 409),
    ],
)
def test_status_follows_ps3_18(outcomes: list[Outcome], status: int) -> None:
    response = stow_response(outcomes)
    assert response.status_code == status
    body = json.loads(bytes(response.body))
    failed = body.get("00081198", {}).get("Value", [])
    assert len(failed) == sum(not o.success for o in outcomes)
    for item, outcome in zip(failed, [o for o in outcomes if not o.success], strict=True):
        assert outcome.refusal is not None
        assert item["00081197"]["Value"] == [FAILURE_REASON_FOR_REFUSAL[outcome.refusal]]
        assert item["00081155"]["Value"] == [outcome.sop_instance_uid]


def test_media_type_parameters() -> None:
    kind, params = media_type('Multipart/Related; type="application/dicom"; boundary="a;b"')
    assert kind == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "a;b"}


def test_part10_head_adds_the_preamble_only_when_missing() -> None:
    meta_first = b"\x02\x00\x00\x00UL\x04\x00" + bytes(200)
    assert part10_head(meta_first[:132])[:132] == bytes(128) + b"DICM"
    full = bytes(128) + b"DICM" + b"\x02\x00"
    assert part10_head(full) == full
    assert part10_head(b"garbage") == b"garbage"


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


BOUNDARY = "b0und"
BODY = (
    b"preamble text\r\n--b0und\r\nContent-Type: application/dicom\r\n\r\n"
    + b"first\r\n--b0unx not a delimiter"
    + b"\r\n--b0und  \r\nContent-Type: text/plain\r\nX-Other: 1\r\n\r\n"
    + b"second"
    + b"\r\n--b0und\r\n\r\n"  # no headers at all
    + b"third\r\n--b0und--\r\nepilogue"
)


@pytest.mark.parametrize("size", [1, 2, 7, 13, 64, 10_000])
def test_reader_splits_parts_whatever_the_chunking(tmp_path: Path, size: int) -> None:
    parts = asyncio.run(
        read_parts(_chunks(BODY, size), BOUNDARY, tmp_path, max_bytes=10_000, max_parts=5)
    )
    contents = [p.path.read_bytes() for p in parts]
    assert contents == [b"first\r\n--b0unx not a delimiter", b"second", b"third"]
    assert [p.content_type for p in parts] == ["application/dicom", "text/plain", ""]
    assert [p.size for p in parts] == [len(c) for c in contents]


@pytest.mark.parametrize(
    ("body", "limit", "status", "words"),
    [
        (BODY, 50, 413, "larger than 50 bytes"),
        (b"--b0und\r\n\r\nabc", 10_000, 400, "ends before"),
        (b"--b0und\r\n" + b"X: y\r\n" * 5000, 10_000_000, 400, "too long"),
        (b"--b0und\r\nno colon here\r\n\r\nabc\r\n--b0und--", 10_000, 400, "malformed header"),
    ],
)
def test_reader_refuses_and_removes_its_files(
    tmp_path: Path, body: bytes, limit: int, status: int, words: str
) -> None:
    with pytest.raises(MultipartError, match=words) as caught:
        asyncio.run(read_parts(_chunks(body, 3), BOUNDARY, tmp_path, max_bytes=limit, max_parts=5))
    assert caught.value.status_code == status
    assert list(tmp_path.iterdir()) == []


def test_reader_caps_parts(tmp_path: Path) -> None:
    body = b"".join(b"--b0und\r\n\r\nx\r\n" for _ in range(4)) + b"--b0und--"
    with pytest.raises(MultipartError, match="more than 3 parts"):
        asyncio.run(read_parts(_chunks(body, 5), BOUNDARY, tmp_path, max_bytes=1000, max_parts=3))
    assert list(tmp_path.iterdir()) == []


def test_sender_is_a_token_role_at_the_command_line() -> None:
    from cxr_triage.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["token", "create", "modality-gw", "--role", "sender"])
    assert args.role == "sender"
    with pytest.raises(SystemExit):
        parser.parse_args(["user", "add", "gw", "--role", "sender"])


def test_the_web_stores_by_stow_only_with_a_broker(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    from cxr_common.settings import WebSettings
    from worklist.server import stow_rules

    engine = create_engine("sqlite://")  # never connected to here
    assert stow_rules(WebSettings(data_dir=tmp_path, broker_url=None), engine) is None
    settings = WebSettings(
        data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", uid_root="1.2.826.0.1.3680043.10.9"
    )
    rules = stow_rules(settings, engine)
    assert rules is not None
    assert rules.uid_root == "1.2.826.0.1.3680043.10.9"  # our own objects are recognised
    assert rules.storage.uri("1.2/3.4.dcm").startswith((tmp_path / "instances").as_uri())
    assert rules.limits == settings.decode_limits()
    engine.dispose()
