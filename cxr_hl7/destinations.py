"""``CXR_HL7_DESTINATIONS``: the MLLP receivers (the RIS, an interface engine) results go to.

A comma-separated list of ``host:port`` entries, e.g. ``ris.example.org:2575,10.0.0.9:6661``;
an IPv6 address goes in brackets (``[fd00::9]:2575``). Empty means no HL7 is sent.
Each rule has its own message naming the entry: a host name or IPv4 address (or bracketed
IPv6), a decimal port 1 to 65535, no entry listed twice.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from cxr_hl7.errors import Hl7ConfigError

__all__ = ["Hl7Destination", "parse_hl7_destination", "parse_hl7_destinations"]

_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


@dataclass(frozen=True)
class Hl7Destination:
    """One MLLP receiver."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _fail(entry: str, why: str) -> Hl7ConfigError:
    return Hl7ConfigError(f"CXR_HL7_DESTINATIONS entry {entry!r}: {why}")


def _host(host: str, entry: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise _fail(entry, "unclosed '[' around an IPv6 address")
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise _fail(entry, f"{host[1:-1]!r} is not an IPv6 address") from None
    if not host:
        raise _fail(entry, "the host before ':' is empty (expected host:port)")
    if ":" in host:
        raise _fail(entry, "write an IPv6 address in brackets, e.g. [fd00::9]:2575")
    if not _HOST_NAME.match(host):
        raise _fail(entry, f"{host!r} is not a host name or IPv4 address")
    return host


def _port(port: str, entry: str) -> int:
    if not port.isascii() or not port.isdigit():
        raise _fail(entry, f"port {port!r} is not a number (expected host:port)")
    value = int(port)
    if not 1 <= value <= 65535:
        raise _fail(entry, f"port {value} is outside 1-65535")
    return value


def parse_hl7_destination(entry: str) -> Hl7Destination:
    """Parse one ``host:port`` entry (rules in the module docstring)."""
    text = entry.strip()
    if "@" in text or "/" in text:
        raise _fail(text, "expected host:port (no AE title, scheme or path: MLLP is plain TCP)")
    host, colon, port = text.rpartition(":")
    if not colon or (host.startswith("[") and not host.endswith("]")):
        raise _fail(text, "expected host:port (no ':port' found)")
    return Hl7Destination(host=_host(host.strip(), text), port=_port(port.strip(), text))


def parse_hl7_destinations(value: str | None) -> tuple[Hl7Destination, ...]:
    """Parse the whole setting; ``None`` or blank means no destination."""
    if value is None:
        return ()
    found: list[Hl7Destination] = []
    for raw in value.split(","):
        if not raw.strip():
            continue
        destination = parse_hl7_destination(raw)
        if destination in found:
            raise _fail(raw.strip(), "listed twice")
        found.append(destination)
    return tuple(found)
