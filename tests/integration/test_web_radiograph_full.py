"""The full-resolution radiograph route (``GET /images/{sop}.u16``) over HTTP: a real
uvicorn server on real Postgres. It needs a radiologist's sign-in, serves the stored
modality values exactly (gzip-encoded), is audited, withholds burned-in text like the PNG,
and honours the web app's decode limits (a file over them: 422 with the reason)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from sqlalchemy import Engine

from cxr_common.limits import DecodeLimits
from cxr_db.accounts.tables import Role
from tests.integration.reading_rows import audit_after, audit_mark
from tests.viewer_seed import COLUMNS, INTERCEPT, ROWS, WINDOW, replace_with_sixteen_bit
from tests.web_server import (
    Seeded,
    add_token,
    add_user,
    reset_accounts,
    seed_worklist,
    serve,
    sign_in,
    web_config,
)
from worklist.radiograph import FULL_MEDIA_TYPE, decode_full

pytestmark = pytest.mark.integration


@pytest.fixture
def db(engine: Engine) -> Engine:
    return reset_accounts(engine)


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "instances"


@pytest.fixture
def seeded(db: Engine, storage: Path) -> Seeded:
    seeded = seed_worklist(db, storage)
    replace_with_sixteen_bit(storage, seeded.flagged_top, seeded.flagged_top_sop)
    return seeded


@contextmanager
def _reader(db: Engine, base_url: str) -> Iterator[httpx.Client]:
    """A radiologist signed in through the form."""
    add_user(db, "ann")
    with httpx.Client(base_url=base_url, timeout=30) as http:
        assert sign_in(http, "ann").status_code == 303
        yield http


@pytest.fixture
def base_url(db: Engine, seeded: Seeded) -> Iterator[str]:
    with serve(db) as url:
        yield url


def test_full_resolution_is_the_stored_modality_values(
    db: Engine, seeded: Seeded, storage: Path, base_url: str
) -> None:
    mark = audit_mark(db)
    with _reader(db, base_url) as http:
        page = http.get(f"/studies/{seeded.flagged_top}")
        assert f'data-full="/images/{seeded.flagged_top_sop}.u16"' in page.text
        assert f'<img src="/images/{seeded.flagged_top_sop}.png"' in page.text, "first paint"
        resp = http.get(f"/images/{seeded.flagged_top_sop}.u16")
        plain = http.get(
            f"/images/{seeded.flagged_top_sop}.u16", headers={"Accept-Encoding": "identity"}
        )
    assert plain.status_code == 200
    assert "content-encoding" not in plain.headers
    assert plain.content == resp.content, "the same body, served from the cache, not gzipped"
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == FULL_MEDIA_TYPE
    assert resp.headers["content-encoding"] == "gzip"
    header, stored = decode_full(resp.content)  # httpx has undone the gzip
    assert (header["rows"], header["columns"]) == (ROWS, COLUMNS)
    ds = pydicom.dcmread(storage / seeded.flagged_top / f"{seeded.flagged_top_sop}.dcm")
    assert (ds.Rows, ds.Columns) == (ROWS, COLUMNS)
    modality = stored.astype(np.int64) * header["slope"] + header["intercept"]
    np.testing.assert_array_equal(modality, ds.pixel_array.astype(np.int64) + INTERCEPT)
    assert (header["window"]["center"], header["window"]["width"]) == WINDOW
    assert b"Zzyzx" not in resp.content
    fetches = [e for e in audit_after(db, mark) if e.action == "image_fetch"]
    assert [(e.target, e.actor, e.detail.get("full_resolution")) for e in fetches] == [
        (seeded.flagged_top_sop, "ann", True)
    ] * 2


def test_full_resolution_needs_a_radiologist(db: Engine, seeded: Seeded, base_url: str) -> None:
    url = f"/images/{seeded.flagged_top_sop}.u16"
    with httpx.Client(base_url=base_url, timeout=30) as anonymous:
        resp = anonymous.get(url)
        assert resp.status_code == 303
        assert resp.headers["location"].startswith("/sign-in?next=")
        assert resp.headers.get("content-type") != FULL_MEDIA_TYPE
        add_user(db, "ada", Role.ADMIN)
        assert sign_in(anonymous, "ada").status_code == 303
        assert anonymous.get(url).status_code == 403
    token = add_token(db, "ris")
    with httpx.Client(base_url=base_url, timeout=30) as api:
        resp = api.get(url, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200
        assert resp.headers["content-type"] == FULL_MEDIA_TYPE


def test_unscored_and_burned_in_images_are_not_served(
    db: Engine, seeded: Seeded, storage: Path, base_url: str
) -> None:
    failed_sop = f"{seeded.order[2]}.1"
    path = storage / seeded.flagged_top / f"{seeded.flagged_top_sop}.dcm"
    ds = pydicom.dcmread(path)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(path)
    with _reader(db, base_url) as http:
        assert http.get(f"/images/{failed_sop}.u16").status_code == 404
        # the 512 px PNG is not cached yet for this file: both routes read the new header
        resp = http.get(f"/images/{seeded.flagged_top_sop}.u16")
        assert resp.status_code == 404
        assert "burned into" in resp.json()["detail"]
        assert http.get(f"/images/{seeded.flagged_top_sop}.png").status_code == 404
        assert http.get("/images/not a uid.u16").status_code == 400


def test_full_resolution_honours_the_decode_limits(db: Engine, seeded: Seeded) -> None:
    limits = DecodeLimits(max_rows=ROWS - 1)
    with serve(db, web_config(limits=limits)) as url, _reader(db, url) as http:
        resp = http.get(f"/images/{seeded.flagged_top_sop}.u16")
        assert resp.status_code == 422
        detail = resp.json()["detail"]
        assert detail.startswith("not shown at full resolution: ")
        assert f"Rows {ROWS:,} exceeds the limit of {ROWS - 1:,}" in detail
        # the 256 px files of the other studies are within the limits
        other = http.get(f"/images/{seeded.order[1]}.1.u16")
        assert other.status_code == 200
        assert decode_full(other.content)[0]["rows"] == 256
