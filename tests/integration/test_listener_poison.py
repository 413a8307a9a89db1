"""Poison files at the listener (issue 12, defects 5 and 7) over real associations: each
is refused before anything is stored, with its own failure status and an Error Comment;
a truncated transfer is never acknowledged with success; nothing is left in staging; a
listener process refusing 1 GiB deflate bombs stays under 1 GiB peak RSS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dicom_listener.server import ListenerHandle
from dicom_listener.statuses import EchoStatus, StoreStatus
from tests import poison
from tests.conftest import Services, StartListener
from tests.listener_support import (
    echo,
    files_under,
    instance_count,
    store_files,
)
from tests.support import running, wait_until

pytestmark = pytest.mark.integration

GIB = 1 << 30


def _absurd(attrs: dict[str, int]) -> Callable[[Path], Path]:
    return lambda path: poison.absurd_dimensions(path, **attrs)


#: name -> (poison file factory, expected status, a fragment of the Error Comment)
POISONS: dict[str, tuple[Callable[[Path], Path], StoreStatus, str]] = {
    "deflate-bomb-1gib-pixels": (
        lambda p: poison.deflate_bomb(p),
        StoreStatus.DECLARED_SIZE,
        "max_rows",
    ),
    "deflate-bomb-1gib-lying-size": (
        lambda p: poison.deflate_bomb(p, rows=64, columns=64),
        StoreStatus.INFLATED_SIZE,
        "deflate bomb",
    ),
    "deflate-bomb-1gib-private-element": (
        lambda p: poison.deflate_bomb(p, where="private"),
        StoreStatus.HEADER_SIZE,
        "before Pixel Data",
    ),
    "deflate-bomb-1gib-trailing-padding": (
        lambda p: poison.deflate_bomb(p, where="trailing"),
        StoreStatus.INFLATED_SIZE,
        "deflate bomb",
    ),
    "rle-bomb-20000x20000": (
        lambda p: poison.rle_bomb(p),
        StoreStatus.DECLARED_SIZE,
        "max_rows",
    ),
    "truncated-short-element": (
        lambda p: poison.truncated_pixel_data(p),
        StoreStatus.PIXEL_DATA_LENGTH,
        "truncated",
    ),
    "truncated-cut-file": (
        lambda p: poison.truncated_pixel_data(p, cut_file=True),
        StoreStatus.PIXEL_DATA_LENGTH,
        "truncated",
    ),
    "zero-length-pixel-data": (
        poison.zero_length_pixel_data,
        StoreStatus.PIXEL_DATA_LENGTH,
        "empty",
    ),
    **{
        f"absurd-{name}": (_absurd(attrs), StoreStatus.DECLARED_SIZE, "")
        for name, (attrs, _reason) in poison.ABSURD.items()
    },
}


@pytest.fixture
def start(start_listener: StartListener) -> StartListener:
    """In-process listeners on free ports (tests/conftest.py's ``start_listener``)."""
    return start_listener


@pytest.mark.parametrize("name", sorted(POISONS))
def test_poison_is_refused_with_its_status_and_an_error_comment(
    name: str, start: Callable[..., ListenerHandle], engine: Engine, tmp_path: Path
) -> None:
    make, status, comment = POISONS[name]
    path = make(tmp_path / "poison" / f"{name}.dcm")
    handle = start()
    (answer,) = store_files(handle.port, [path])
    assert answer is not None
    assert answer.status == status, hex(answer.status)
    assert 0xC000 <= answer.status <= 0xCFFF  # a failure: the modality keeps and resends it
    assert answer.error_comment
    assert comment in answer.error_comment
    assert len(answer.error_comment) <= 64
    assert instance_count(engine) == 0
    assert files_under(tmp_path / "instances") == []  # staging included
    assert echo(handle.port) == EchoStatus.SUCCESS


@pytest.mark.parametrize("make", [poison.blank_frame, poison.constant_frame])
def test_blank_and_constant_frames_are_stored_for_the_worker_to_judge(
    make: Callable[[Path], Path],
    start: Callable[..., ListenerHandle],
    engine: Engine,
    tmp_path: Path,
) -> None:
    handle = start()
    (answer,) = store_files(handle.port, [make(tmp_path / "frame.dcm")])
    assert answer is not None
    assert answer.status == StoreStatus.SUCCESS
    assert instance_count(engine) == 1


def test_limits_are_settings(
    start: Callable[..., ListenerHandle], engine: Engine, tmp_path: Path
) -> None:
    path = poison.dx_dataset()
    handle = start(max_rows=32)  # the 64 x 64 DX is now over the limit
    (answer,) = store_files(handle.port, [path])
    assert answer is not None
    assert answer.status == StoreStatus.DECLARED_SIZE
    assert answer.error_comment == "max_rows exceeded: 64 > 32"
    assert instance_count(engine) == 0


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_listener_process_stays_under_1_gib_refusing_1_gib_bombs(
    services: Services, engine: Engine, tmp_path: Path
) -> None:
    names = [n for n in POISONS if "bomb" in n]
    paths = [POISONS[n][0](tmp_path / "poison" / f"{n}.dcm") for n in names]
    assert all(p.stat().st_size < 8 << 20 for p in paths)
    port_file = tmp_path / "port"
    env = services.env("listener")
    env.update(CXR_STORAGE_URI=(tmp_path / "instances").as_uri())
    code = (
        "import sys, pathlib; from cxr_common.settings import listener_settings; "
        "from cxr_db import make_engine; from cxr_queue import make_celery; "
        "from cxr_common.lifecycle import stop_on_signals; "
        "from dicom_listener.server import start_listener; "
        "s = listener_settings().with_overrides(dicom_host='127.0.0.1', dicom_port=0); "
        "e = make_engine(s.database_url_value()); "
        "h = start_listener(s, e, make_celery(s.broker_url_value(), s.queue_name)); "
        f"pathlib.Path({str(port_file)!r}).write_text(str(h.port)); "
        "stop = stop_on_signals('test').__enter__(); stop.wait(); h.shutdown()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        wait_until(
            lambda: port_file.exists() and port_file.read_text(),
            120,
            "the listener's port written",
            alive=running([proc]),
        )
        port = int(port_file.read_text())
        baseline = _vm_hwm_kib(proc.pid)
        answers = store_files(port, paths * 2)  # every bomb twice, one association
        peak = _vm_hwm_kib(proc.pid)
        assert echo(port) == EchoStatus.SUCCESS
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    expected = [POISONS[n][1] for n in names] * 2
    assert [a.status if a else None for a in answers] == expected
    print(f"listener VmHWM: {baseline / 1024:.0f} MiB at start, {peak / 1024:.0f} MiB after")
    assert peak * 1024 < GIB
    assert instance_count(engine) == 0
    assert files_under(tmp_path / "instances") == []
    assert os.path.getsize(paths[0]) < GIB / 100


def test_control_characters_in_header_values_are_stored_cleaned(
    start: Callable[..., ListenerHandle], engine: Engine
) -> None:
    """Found by the fuzz: a NUL in AccessionNumber made Postgres refuse the row and the
    listener answer 0xA702 "out of resources" (retry forever) for a storable instance."""
    ds = poison.dx_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: invalid SH/CS, on purpose
        ds.AccessionNumber = "ACC\x00001\x07"
        ds.Modality = "D\x00X"
    handle = start()
    (answer,) = store_files(handle.port, [ds])
    assert answer is not None
    assert answer.status == StoreStatus.SUCCESS
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT s.accession_number, i.modality FROM instances i "
                "JOIN studies s ON s.id = i.study_id"
            )
        ).one()
    assert tuple(row) == ("ACC001", "DX")  # NUL and BEL gone
