"""`cxr-triage up` with the embedded services (issue 12, defect 9): Redis listens on
127.0.0.1 with a generated password that no log shows, and when the embedded Redis dies
`up` notices, says so and exits non-zero instead of running on without a broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat

import pytest
import redis

from tests.conftest import StartUp
from tests.support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_up_stops_with_a_message_when_its_embedded_redis_dies(start_up: StartUp) -> None:
    up = start_up("--workers", "0", "--no-web")
    data = up.data_dir
    try:
        wait_until(lambda: "cxr-triage is up" in up.tail(10**7), 300, "up", alive=up.alive)
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
        code = up.proc.wait(timeout=120)
    finally:
        up.kill()
    output = up.tail(10**7)
    assert code == 1, output[-3000:]
    assert f"embedded Redis (pid {info['redis_pid']})" in output
    assert "stopping" in output
    assert "cxr-triage stopped" in output
    assert password not in output
    redis_log = (data / "embedded" / "redis" / "redis.log").read_text(errors="replace")
    assert password not in redis_log
