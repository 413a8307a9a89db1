"""Helpers for the web worklist tests: a real uvicorn server in a thread, seed rows (with
real stored DICOM files when a folder is given), users and tokens, and a signed-in client."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from cxr_db.accounts import store as accounts
from cxr_db.accounts.tables import Role
from cxr_db.instances import writes as repo
from cxr_ingest import Ingest
from tests.db_rows import prediction, record
from tests.dicom_factory import chest_like, make_dataset, write
from tests.integration.reading_rows import ADMIN, PASSWORD, cheap_passwords, clean
from tests.support import thread_running, wait_until
from worklist.app import create_app
from worklist.config import WebConfig

#: A made-up patient in the seeded files; tests assert it never reaches a log line.
PATIENT_NAME = "Zzyzxtestperson^Quillon"
PATIENT_NAME_SHOWN = "Zzyzxtestperson, Quillon"
PATIENT_ID = "PID-7731-TEST"
PASSWORDS = cheap_passwords()


def web_config(**changes: object) -> WebConfig:
    """The app's configuration for tests: argon2 with small parameters, the rest default."""
    return WebConfig(passwords=PASSWORDS, **changes)  # type: ignore[arg-type]


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for 127.0.0.1/localhost (PEM files in ``folder``)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "web-cert.pem", folder / "web-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def web_role_engine(engine: Engine) -> Engine:
    """An engine on ``engine``'s database as ``cxr_web`` when that role may connect there
    (the migration created it and ``CXR_TEST_DB_ROLES`` is not 0); ``engine`` otherwise."""
    import os

    from cxr_db import make_engine
    from cxr_db.roles import role_url

    if os.environ.get("CXR_TEST_DB_ROLES", "1") == "0":
        return engine
    try:
        with engine.connect() as conn:
            may = conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cxr_web') "
                    "AND has_database_privilege('cxr_web', current_database(), 'CONNECT')"
                )
            ).scalar()
    except OperationalError:  # a test of a database that does not answer
        return engine
    if not may:
        return engine
    url = engine.url.render_as_string(hide_password=False)
    return make_engine(role_url(url, "web", None))


@contextmanager
def serve(
    engine: Engine,
    config: WebConfig | None = None,
    timeout_s: float = 30.0,
    stow: Ingest | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[str]:
    """Run the worklist app with uvicorn on a free loopback port; yield its base URL.
    As ``worklist.server`` runs it: uvicorn's own proxy-header handling off (the app
    believes ``X-Forwarded-*`` only from ``trusted_proxies``). ``stow``: the ingest rules of
    STOW-RS (None: it answers 503). The app connects as the web's database role where the
    roles exist (``engine`` is the owner's, for seeding). ``tls``: (cert, key) PEM files,
    served over HTTPS."""
    web_engine = web_role_engine(engine)
    ssl: dict[str, str] = {}
    if tls is not None:
        ssl = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])}
    config_ = uvicorn.Config(
        create_app(web_engine, config or web_config(), stow),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        proxy_headers=False,
        **ssl,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config_)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: server.started,
            timeout_s,
            "uvicorn started",
            alive=thread_running(thread),
            interval=0.01,
        )
    except AssertionError:
        server.should_exit = True
        thread.join(timeout_s)
        raise
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        if web_engine is not engine:
            web_engine.dispose()
        assert not thread.is_alive(), "uvicorn did not stop"


def heatmap_png(seed: int) -> bytes:
    """A small but real PNG: a grey gradient with a warm blob, like an overlay."""
    img = Image.new("RGB", (128, 128))
    for y in range(128):
        for x in range(128):
            d = ((x - 40 - seed * 10) ** 2 + (y - 60) ** 2) ** 0.5
            heat = max(0, 255 - int(d * 5))
            grey = (x + y) // 2
            img.putpixel((x, y), (min(255, grey + heat), grey + heat // 4, max(0, grey - heat)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Seeded:
    """Study Instance UIDs of the seeded worklist, in the order the worklist must show."""

    order: tuple[str, ...]
    flagged_top: str
    flagged_top_sop: str
    failed_reason: str
    not_eligible_reason: str


def overlay_png(pixels: np.ndarray, seed: int) -> bytes:
    """A heatmap-like PNG over ``pixels`` (uint8 HxW): grey with a warm blob, same size."""
    grey = pixels.astype(np.float32) / 255.0
    h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w]
    heat = np.exp(-(((xx - w * (0.3 + 0.15 * seed)) ** 2 + (yy - h * 0.5) ** 2) / (0.03 * h * w)))
    r = np.clip(grey * (1 - 0.55 * heat) + 0.55 * heat, 0, 1)
    g = np.clip(grey * (1 - 0.55 * heat) + 0.25 * heat, 0, 1)
    b = np.clip(grey * (1 - 0.55 * heat), 0, 1)
    rgb = (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _record(
    engine: Engine, storage: Path | None, study: str, sop: str, accession: str | None
) -> int:
    if storage is None:
        return record(engine, study, sop, accession)
    ds = make_dataset(chest_like(256, seed=0), study_uid=study, sop_uid=sop)
    ds.AccessionNumber = accession or ""
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientSex = "F"
    ds.PatientBirthDate = "19610304"
    ds.StudyDate = "20260115"
    path = write(ds, storage / study / f"{sop}.dcm")
    rec = repo.InstanceRecord(
        study_instance_uid=study,
        sop_instance_uid=sop,
        sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        accession_number=accession,
        modality="CR",
        body_part="CHEST",
        view_position="PA",
        calling_ae_title="TEST",
        storage_uri=path.as_uri(),
        size_bytes=path.stat().st_size,
    )
    return repo.record_instance(engine, rec).instance_id


def _png(storage: Path | None, seed: int) -> bytes:
    if storage is None:
        return heatmap_png(seed)
    return overlay_png(chest_like(256, seed=0), seed)


def _prediction(p: float, png: bytes) -> repo.PredictionRecord:
    return prediction(p, threshold=0.42, png=png, version="2026.11-cal1")


def seed_worklist(engine: Engine, storage: Path | None = None) -> Seeded:
    """Six studies: two flagged, one failed, one not eligible, one pending, one routine.
    With ``storage``, each instance is a real DICOM file there (with a made-up patient),
    so the study page can show the radiograph and the patient context."""
    failed_reason = "could not decode pixel data: truncated JPEG 2000 stream"
    not_eligible_reason = "lateral view: not a frontal chest radiograph"
    routine = _record(engine, storage, "1.2.826.0.1.7.1", "1.2.826.0.1.7.1.1", "ACC-1001")
    repo.record_prediction(engine, routine, _prediction(0.204, _png(storage, 1)))
    top = _record(engine, storage, "1.2.826.0.1.7.2", "1.2.826.0.1.7.2.1", "ACC-1002")
    repo.record_prediction(engine, top, _prediction(0.912, _png(storage, 2)))
    failed = _record(engine, storage, "1.2.826.0.1.7.3", "1.2.826.0.1.7.3.1", "ACC-1003")
    repo.record_failed(engine, failed, failed_reason)
    lateral = _record(engine, storage, "1.2.826.0.1.7.4", "1.2.826.0.1.7.4.1", "ACC-1004")
    repo.record_not_eligible(engine, lateral, not_eligible_reason)
    _record(engine, storage, "1.2.826.0.1.7.5", "1.2.826.0.1.7.5.1", None)
    second = _record(engine, storage, "1.2.826.0.1.7.6", "1.2.826.0.1.7.6.1", "ACC-1006")
    repo.record_prediction(engine, second, _prediction(0.655, _png(storage, 3)))
    return Seeded(
        order=(
            "1.2.826.0.1.7.2",
            "1.2.826.0.1.7.6",
            "1.2.826.0.1.7.3",
            "1.2.826.0.1.7.4",
            "1.2.826.0.1.7.5",
            "1.2.826.0.1.7.1",
        ),
        flagged_top="1.2.826.0.1.7.2",
        flagged_top_sop="1.2.826.0.1.7.2.1",
        failed_reason=failed_reason,
        not_eligible_reason=not_eligible_reason,
    )


# ------------------------------------------------------------------ users and clients


def add_user(engine: Engine, name: str, role: Role = Role.RADIOLOGIST) -> accounts.UserInfo:
    return accounts.add_user(engine, name, PASSWORD, role, passwords=PASSWORDS, actor=ADMIN)


def add_token(engine: Engine, name: str, role: Role = Role.RADIOLOGIST) -> str:
    return accounts.create_token(engine, name, role, actor=ADMIN).token


def reset_accounts(engine: Engine) -> Engine:
    """Empty users, tokens, sessions, read states and answers (not the audit log)."""
    return clean(engine)


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def sign_in(client: httpx.Client, name: str, password: str = PASSWORD) -> httpx.Response:
    """Sign in through the form, as a browser would; returns the response to the POST."""
    form = client.get("/sign-in")
    assert form.status_code == 200, form.text
    return client.post(
        "/sign-in",
        data={"csrf_token": csrf_of(form.text), "username": name, "password": password},
    )


def open_study(client: httpx.Client, uid: str) -> httpx.Response:
    """Open a study page and claim it as the page's script does (a GET claims nothing:
    ``POST /studies/{uid}/claim`` with the page's CSRF token in ``X-CSRF-Token``)."""
    page = client.get(f"/studies/{uid}")
    assert page.status_code == 200, page.text
    claimed = client.post(
        f"/studies/{uid}/claim",
        headers={"X-CSRF-Token": csrf_of(page.text), "Accept": "application/json"},
    )
    assert claimed.status_code in (200, 409), claimed.text
    return page
