"""`cxr-triage up` with the embedded services (issue 12, defect 9): Redis listens on
127.0.0.1 with a generated password that no log shows, and when the embedded Redis dies
`up` notices, says so and exits non-zero instead of running on without a broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from cxr_triage.embedded import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in {path.name}"
        time.sleep(0.2)


def test_up_stops_with_a_message_when_its_embedded_redis_dies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_DATA_DIR=str(data), CXR_DICOM_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "up", "--workers", "0", "--no-web"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(log_path, "cxr-triage is up", up, 300)
            info_path = data / "embedded" / "services.json"
            assert stat.S_IMODE(info_path.stat().st_mode) == 0o600
            info = json.loads(info_path.read_text())
            password = info["redis_password"]
            assert len(password) >= 32
            assert f":{password}@127.0.0.1:" in info["broker_url"]
            # No password, no service; with it, PONG. Only loopback.
            anonymous = redis.Redis(port=info["redis_port"])
            authenticated = redis.Redis.from_url(info["broker_url"])
            try:
                with pytest.raises(redis.AuthenticationError):
                    anonymous.ping()
                assert authenticated.ping()
            finally:
                anonymous.close()
                authenticated.close()
            with socket.socket() as probe:
                probe.settimeout(2)
                external = [
                    a
                    for a in socket.gethostbyname_ex(socket.gethostname())[2]
                    if not a.startswith("127.")
                ]
                if external:
                    assert probe.connect_ex((external[0], info["redis_port"])) != 0

            os.kill(int(info["redis_pid"]), signal.SIGKILL)
            code = up.wait(timeout=120)
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
    output = log_path.read_text(errors="replace")
    assert code == 1, output[-3000:]
    assert f"embedded Redis (pid {info['redis_pid']})" in output
    assert "stopping" in output
    assert "cxr-triage stopped" in output
    assert password not in output
    redis_log = (data / "embedded" / "redis" / "redis.log").read_text(errors="replace")
    assert password not in redis_log
