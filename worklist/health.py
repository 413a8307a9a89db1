"""``/healthz`` and ``/readyz``: what each checks, and nothing more.

* Health (``check_health``): the database answers ``SELECT 1`` and the broker answers a
  Redis ``PING``, each within a short timeout. This is what a load balancer or
  ``docker compose`` asks; it needs no credentials and says nothing beyond ok/unavailable.
* Readiness (``check_readiness``): health, plus the model and calibration that the
  workers load verify: ``model.json`` parses, the weights file's sha256 equals the one it
  declares, and ``calibration.json`` was fitted for exactly those weights. The web
  process itself never loads a model (it imports no torch); what it can say honestly is
  that the files a worker would load are present and intact, and which model version and
  calibration the worklist shows. It does not prove a worker is running: queue depth and
  worker heartbeats belong to ``/metrics``.

The sha256 of the weights is computed once per (path, size, mtime), not on every probe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cxr_db.instances import reads as instance_reads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail}


def check_database(engine: Engine) -> Check:
    try:
        instance_reads.database_answers(engine)
    except SQLAlchemyError as exc:
        log.warning("health check: database does not answer (%s)", type(exc).__name__)
        return Check("database", False, "database does not answer")
    return Check("database", True, "answers")


def check_broker(broker_url: str | None, timeout_s: float = 2.0) -> Check:
    if broker_url is None:
        return Check("broker", True, "not configured for this process")
    client = redis.Redis.from_url(
        broker_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        log.warning("health check: broker does not answer (%s)", type(exc).__name__)
        return Check("broker", False, "broker does not answer")
    finally:
        client.close()
    return Check("broker", True, "answers")


_hash_lock = threading.Lock()
_hash_cache: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


@dataclass(frozen=True)
class ModelFiles:
    """What ``/readyz`` and the study page say about the model the workers load."""

    ok: bool
    detail: str
    name: str | None = None
    version: str | None = None
    calibration_version: str | None = None
    threshold: float | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "detail": self.detail,
            "name": self.name,
            "version": self.version,
            "calibration_version": self.calibration_version,
            "threshold": self.threshold,
        }


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def check_model_files(model_dir: Path, calibration_path: Path) -> ModelFiles:
    """Verify the model contract, its weights' sha256 and the calibration's binding."""
    try:
        contract = _read_json(model_dir / "model.json")
        name, version = str(contract["name"]), str(contract["version"])
        declared = str(contract["sha256"])
        weights = model_dir / str(contract["weights_file"])
        actual = _sha256_file(weights)
        calibration = _read_json(calibration_path)
        cal_version = str(calibration["version"])
        threshold = float(calibration["threshold"])
        bound_to = str(calibration["model_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return ModelFiles(False, f"model files unreadable ({type(exc).__name__})")
    if actual != declared:
        return ModelFiles(False, "weights sha256 differs from model.json", name, version)
    if bound_to != declared:
        return ModelFiles(
            False, "calibration was fitted for other weights", name, version, cal_version
        )
    return ModelFiles(True, "weights and calibration verify", name, version, cal_version, threshold)


def check_health(engine: Engine, broker_url: str | None, timeout_s: float = 2.0) -> list[Check]:
    return [check_database(engine), check_broker(broker_url, timeout_s)]
