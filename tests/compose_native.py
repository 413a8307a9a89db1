"""Run docker-compose.yml's services natively, for tests where no Docker engine runs.

Each service of the ``cxr-triage`` image runs as ``python -m cxr_triage COMMAND`` with the
environment compose gives it, adapted only where a container differs from a process on
this machine:

* Postgres and Redis are the test's (``CXR_DATABASE_URL``, ``CXR_BROKER_URL``), with a
  queue name of the test's own; a service that compose connects as a process role
  (``cxr_listener`` ...) connects to the test's database as that role, the owner's
  (``migrate``) as the test's user;
* every absolute container path (``/data``, ``/tmp``) lives under one folder (``root``), so
  volumes that two services share are the same folder here too;
* every ``CXR_*_PORT`` gets a free port.

The same rewrites apply to the service's ``healthcheck`` test, which is then run as it
is: ``CMD`` as an argv (``python`` is this interpreter), ``CMD-SHELL`` with ``sh -c``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
OUR_IMAGE = "cxr-triage:latest"

_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")
#: An absolute container path (``/data/...``, ``/tmp/...``), also inside ``file:///data``.
_CONTAINER_PATH = re.compile(r"(?<![\w.])/(?:data|tmp)(?:/[\w.\-]*)*")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``."""

    def one(match: re.Match[str]) -> str:
        name, kind, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name, "")
        if value:
            return value
        if kind == "?":
            raise KeyError(f"{name} must be set: {arg}")
        return arg if kind == "-" else ""

    return _VARIABLE.sub(one, text)


def example_variables() -> dict[str, str]:
    """The variables of ``.env.example`` (what an operator fills in), as compose reads them."""
    out: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def load_compose(variables: Mapping[str, str]) -> dict[str, Any]:
    data = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), variables))
    assert isinstance(data, dict)
    return data


@dataclass
class NativeService:
    """One compose service as a local process (``proc`` once started)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """The service's own healthcheck passes now."""
        assert self.healthcheck is not None
        done = subprocess.run(
            self.healthcheck, env=self.env, capture_output=True, timeout=30, check=False
        )
        return done.returncode == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM and wait; the exit code (None if it had to be killed)."""
        code: int | None = None
        if self.proc is not None:
            self.terminate()
            try:
                code = self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        return code


@dataclass
class Adapter:
    """The rewrites from a container's view to this machine's."""

    root: Path
    database_url: str
    broker_url: str
    extra_env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for folder in ("data", "tmp"):  # as the image has them
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def database_url_as(self, compose_url: str) -> str:
        """The test's database, as the user compose's URL names when that is a process
        role (no password: the test's Postgres trusts loopback), else as the test's user."""
        from sqlalchemy.engine import make_url

        from cxr_db.roles import ROLE_PREFIX, role_url

        user = make_url(compose_url).username or ""
        if user.startswith(ROLE_PREFIX):
            return role_url(self.database_url, user.removeprefix(ROLE_PREFIX), None)
        return self.database_url

    def path(self, text: str) -> str:
        return _CONTAINER_PATH.sub(lambda m: str(self.root) + m.group(0), text)

    def port(self, container_port: str) -> str:
        if container_port not in self.ports:
            self.ports[container_port] = free_port()
        return str(self.ports[container_port])

    def env(self, environment: Mapping[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        for key, raw in environment.items():
            value = "" if raw is None else str(raw)
            if key == "CXR_DATABASE_URL":
                value = self.database_url_as(value)
            elif key == "CXR_BROKER_URL":
                value = self.broker_url
            elif key.endswith("_PORT") and value.isdigit():
                value = self.port(value)
            else:
                value = self.path(value)
            env[key] = value
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def healthcheck(self, test: list[str] | str, env: Mapping[str, str]) -> list[str]:
        """The healthcheck ``test`` as an argv, paths and ports rewritten."""
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        kind, *rest = test
        out = []
        for arg in rest:
            arg = self.path(arg)
            for container, local in self.ports.items():
                arg = re.sub(rf"\b{container}\b", str(local), arg)
            out.append(arg)
        if kind == "CMD-SHELL":
            return ["sh", "-c", " ".join(out)]
        assert kind == "CMD", test
        if out[0] == "python":
            out[0] = sys.executable
        else:
            found = shutil.which(out[0], path=env.get("PATH"))
            assert found, f"{out[0]} (a healthcheck's command) is not installed"
        return out


def one_shot(service: Mapping[str, Any]) -> bool:
    return service.get("restart") == "no"


def native_services(
    compose: Mapping[str, Any], adapter: Adapter, logs: Path
) -> list[NativeService]:
    """Every service of our image, in file order (one-shot ones first: they run first)."""
    out: list[NativeService] = []
    for name, service in compose["services"].items():
        if service.get("image") != OUR_IMAGE:
            continue
        env = adapter.env(service.get("environment") or {})
        argv = [sys.executable, "-m", "cxr_triage", *service["command"]]
        check = service.get("healthcheck")
        out.append(
            NativeService(
                name,
                argv,
                env,
                adapter.healthcheck(check["test"], env) if check else None,
                logs / f"{name}.log",
            )
        )
    order = {name: i for i, name in enumerate(compose["services"])}
    out.sort(key=lambda s: (not one_shot(compose["services"][s.name]), order[s.name]))
    return out
