"""Real peers (DCMTK, dicom3tools, Orthanc, Chromium, docker-compose, openssl): one rule for
a test that needs one.

Locally a missing peer skips the test with its reason and the package that provides it.
Under ``CI=true`` (``.ci/run`` sets it and installs every peer) a missing peer fails the
test, naming what is missing: CI must not go green by skipping the tests that talk to the
real DICOM, browser and compose tools.

Use the mark on a test, class or module (``pytestmark``), or call :func:`require_peer`
inside a test or fixture::

    @requires_peer("dcmtk")
    def test_storescu_sends(...): ...
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The marker :func:`requires_peer` sets; ``tests/conftest.py`` checks it before each test.
MARK = "peer"


@dataclass(frozen=True)
class Peer:
    tools: tuple[str, ...]  # executables on PATH (or in /usr/sbin), or absolute paths
    package: str  # what provides them (Debian)


PEERS: dict[str, Peer] = {
    "dcmtk": Peer(("storescu", "storescp", "echoscu", "dcmdump", "dsrdump"), "dcmtk"),
    "dicom3tools": Peer(("dciodvfy",), "dicom3tools"),
    "orthanc": Peer(("Orthanc",), "orthanc orthanc-dicomweb"),
    "chromium": Peer(("/usr/bin/chromium",), "chromium"),
    "docker-compose": Peer(("docker-compose",), "docker-compose"),
    "openssl": Peer(("openssl",), "openssl"),
}

_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _present(tool: str) -> bool:
    if os.path.isabs(tool):
        return Path(tool).is_file() and os.access(tool, os.X_OK)
    return shutil.which(tool, path=_SEARCH) is not None


def missing_tools(*peers: str) -> list[str]:
    """The tools of ``peers`` that are not installed here (unknown names are an error)."""
    return [tool for name in peers for tool in PEERS[name].tools if not _present(tool)]


def have_peer(*peers: str) -> bool:
    return not missing_tools(*peers)


def require_peer(*peers: str) -> None:
    """Skip (locally) or fail (under CI) the running test unless every peer is installed."""
    missing = missing_tools(*peers)
    if not missing:
        return
    packages = " ".join(PEERS[name].package for name in peers)
    reason = f"needs {', '.join(missing)} (Debian: apt-get install {packages})"
    if in_ci():
        pytest.fail(f"CI=true and a real peer is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def requires_peer(*peers: str) -> pytest.MarkDecorator:
    """Mark a test, class or module as needing ``peers`` (see the module docstring)."""
    unknown = [name for name in peers if name not in PEERS]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; known: {sorted(PEERS)}")
    return getattr(pytest.mark, MARK)(*peers)
