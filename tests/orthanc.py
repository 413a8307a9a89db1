"""A real PACS for tests: Debian's Orthanc with its DICOMweb plugin, on free loopback ports,
in its own temp folders, with its own configuration (never the system service).

:func:`running_orthanc` starts it with HTTP basic auth (:data:`USER`, :data:`PASSWORD`), the
DICOMweb plugin at ``/dicom-web/``, optional DICOM modalities and an optional Lua script
(its routing: e.g. ``OnStoredInstance`` doing ``SendToModality``), waits until its REST
API answers, and stops it afterwards. Tests that use it mark themselves
``requires_peer("orthanc")``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import free_port, running, wait_until

USER = "cxr-results"
PASSWORD = "orthanc-test-password-7"
#: Where Debian's orthanc-dicomweb puts the plugin.
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def dicomweb_plugin() -> Path:
    for folder in PLUGIN_DIRS:
        for candidate in sorted(folder.glob("libOrthancDicomWeb.so*")):
            return candidate
    raise FileNotFoundError("libOrthancDicomWeb.so not found (Debian: orthanc-dicomweb)")


@dataclass(frozen=True)
class Orthanc:
    http_port: int
    dicom_port: int
    ae_title: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def destination(self) -> str:
        """Its DICOM port as a CXR_RESULT_DESTINATIONS entry."""
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(USER, PASSWORD), timeout=30)

    def get(self, path: str) -> Any:
        with self.client() as http:
            resp = http.get(path)
        resp.raise_for_status()
        return resp.json()

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Declare a DICOM modality (a C-STORE destination of its routing) at run time."""
        with self.client() as http:
            http.put(f"/modalities/{name}", json=[ae_title, host, port]).raise_for_status()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@contextmanager
def running_orthanc(
    folder: Path,
    *,
    ae_title: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    lua: str | None = None,
) -> Iterator[Orthanc]:
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config: dict[str, Any] = {
        "Name": "cxr-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        # both our C-STORE and our STOW-RS deliver the same objects: each is a real store
        "OverwriteInstances": True,
        "DicomModalities": {name: list(entry) for name, entry in (modalities or {}).items()},
        "DicomScpTimeout": 30,
        "StableAge": 1,
    }
    if lua is not None:
        script = folder / "routing.lua"
        script.write_text(lua)
        config["LuaScripts"] = [str(script)]
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["Orthanc", "--verbose", str(config_path)], stdout=out, stderr=subprocess.STDOUT
        )
    pacs = Orthanc(http_port, dicom_port, ae_title, log)

    def answers() -> bool:
        try:
            with pacs.client() as http:
                return http.get("/system").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(
            answers,
            60,
            lambda: f"Orthanc answering on {http_port}\n{pacs.tail()}",
            alive=running([proc], log),
            interval=0.2,
        )
        yield pacs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
