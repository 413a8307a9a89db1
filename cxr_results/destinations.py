"""``CXR_RESULT_DESTINATIONS``: where result objects are sent.

The setting is a comma-separated list of ``AE_TITLE@host:port`` entries, e.g.
``PACS@pacs.example.org:104,ARCHIVE@10.0.0.7:11112``; an IPv6 address goes in brackets
(``PACS@[fd00::7]:104``). Empty (or only blanks and commas) means nothing is sent.

Rules checked, each with its own message naming the offending entry:

* AE title: 1 to 16 characters of the DICOM default repertoire (PS3.5 6.2, VR AE), no
  backslash or control characters, not only spaces; leading/trailing spaces are not
  significant and are removed.
* host: a DNS name or IPv4 address, or an IPv6 address in brackets; no spaces.
* port: a decimal integer 1 to 65535.
* the same AE title, host and port may not be listed twice.

Which result objects a destination gets (:class:`ResultObject`): all of them by default;
a suffix in brackets picks some, joined with ``+``: ``VIEWER@10.0.0.9:104[sr+seg]``.
``sc`` is the burned-in Secondary Capture (the human-readable fallback), ``sr`` the TID
1500 structured report, ``seg`` the heatmap as a FRACTIONAL Segmentation. Unknown or
repeated names and an empty selection are refused, naming the entry.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum

from cxr_results.errors import DestinationConfigError

__all__ = [
    "ALL_OBJECTS",
    "Destination",
    "ResultObject",
    "parse_destination",
    "parse_destinations",
    "split_objects",
]

_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
AE_TITLE_MAX = 16


class ResultObject(StrEnum):
    """A kind of result object a destination may receive (the names of the setting)."""

    SC = "sc"
    SR = "sr"
    SEG = "seg"


#: The default selection: every object.
ALL_OBJECTS: frozenset[ResultObject] = frozenset(ResultObject)


@dataclass(frozen=True)
class Destination:
    """One C-STORE SCP to send results to, and which result objects it gets."""

    ae_title: str
    host: str
    port: int
    objects: frozenset[ResultObject] = field(default=ALL_OBJECTS, compare=False)

    def __str__(self) -> str:
        """``AE@host:port``: also the key its sends are recorded under (the selection is
        not part of it, so changing it does not resend what was stored)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    def wants(self, kind: ResultObject) -> bool:
        return kind in self.objects


def split_objects(entry: str) -> tuple[str, frozenset[ResultObject]]:
    """``(address, objects)`` of an entry with an optional ``[sc+sr+seg]`` suffix; without
    one, ``(entry, ALL_OBJECTS)``. The list is the last ``[`` after the last ``:`` (object
    names have no colon, so an IPv6 host in brackets is never taken for one)."""
    text = entry.strip()
    start = text.rfind("[")
    if start < 0 or start < text.rfind(":"):
        return text, ALL_OBJECTS
    if not text.endswith("]"):
        raise DestinationConfigError(
            f"result destination {text!r}: unclosed '[' in the object list "
            "(write e.g. PACS@host:104[sr+seg])"
        )
    address, names = text[:start], text[start + 1 : -1]
    chosen: list[ResultObject] = []
    for raw in names.split("+"):
        name = raw.strip().lower()
        if not name:
            raise DestinationConfigError(
                f"result destination {text!r}: empty object name in [{names}] "
                f"(choose from {', '.join(o.value for o in ResultObject)}, joined with '+')"
            )
        try:
            kind = ResultObject(name)
        except ValueError:
            raise DestinationConfigError(
                f"result destination {text!r}: unknown result object {raw.strip()!r} "
                f"(choose from {', '.join(o.value for o in ResultObject)}, joined with '+')"
            ) from None
        if kind in chosen:
            raise DestinationConfigError(
                f"result destination {text!r}: result object {name!r} is listed twice"
            )
        chosen.append(kind)
    return address.strip(), frozenset(chosen)


def _check_ae_title(title: str, entry: str) -> str:
    stripped = title.strip(" ")
    if not stripped:
        raise DestinationConfigError(
            f"result destination {entry!r}: the AE title before '@' is empty"
        )
    if len(stripped) > AE_TITLE_MAX:
        raise DestinationConfigError(
            f"result destination {entry!r}: AE title {stripped!r} is {len(stripped)} "
            f"characters, at most {AE_TITLE_MAX} are allowed"
        )
    if "\\" in stripped or any(ord(c) < 0x20 or ord(c) > 0x7E for c in stripped):
        raise DestinationConfigError(
            f"result destination {entry!r}: AE title {stripped!r} may hold only printable "
            "ASCII characters and no backslash"
        )
    return stripped


def _check_host(host: str, entry: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise DestinationConfigError(
                f"result destination {entry!r}: unclosed '[' around an IPv6 address"
            )
        inner = host[1:-1]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise DestinationConfigError(
                f"result destination {entry!r}: {inner!r} is not an IPv6 address"
            ) from None
    if not host:
        raise DestinationConfigError(
            f"result destination {entry!r}: the host between '@' and ':' is empty"
        )
    if ":" in host:
        raise DestinationConfigError(
            f"result destination {entry!r}: write an IPv6 address in brackets, "
            "e.g. PACS@[fd00::7]:104"
        )
    if not _HOST_NAME.match(host):
        raise DestinationConfigError(
            f"result destination {entry!r}: {host!r} is not a host name or IPv4 address"
        )
    return host


def _check_port(port: str, entry: str) -> int:
    if not port.isascii() or not port.isdigit():
        raise DestinationConfigError(
            f"result destination {entry!r}: port {port!r} is not a number (write AE@host:port)"
        )
    value = int(port)
    if not 1 <= value <= 65535:
        raise DestinationConfigError(
            f"result destination {entry!r}: port {value} is outside 1-65535"
        )
    return value


def parse_destination(entry: str) -> Destination:
    """Parse one ``AE_TITLE@host:port[objects]`` entry (rules in the module docstring)."""
    text, objects = split_objects(entry)
    title, at, address = text.rpartition("@")
    if not at:
        raise DestinationConfigError(
            f"result destination {text!r}: expected AE_TITLE@host:port (no '@' found)"
        )
    host, colon, port = address.rpartition(":")
    if not colon or (host.startswith("[") and not host.endswith("]")):
        raise DestinationConfigError(
            f"result destination {text!r}: expected AE_TITLE@host:port (no ':port' found)"
        )
    return Destination(
        ae_title=_check_ae_title(title, text),
        host=_check_host(host.strip(), text),
        port=_check_port(port.strip(), text),
        objects=objects,
    )


def parse_destinations(value: str | None) -> tuple[Destination, ...]:
    """Parse the whole setting; ``None`` or blank means no destination."""
    if value is None:
        return ()
    destinations: list[Destination] = []
    for raw in value.split(","):
        if not raw.strip():
            continue
        destination = parse_destination(raw)
        if destination in destinations:
            raise DestinationConfigError(
                f"result destination {raw.strip()!r} is listed twice in CXR_RESULT_DESTINATIONS"
            )
        destinations.append(destination)
    return tuple(destinations)
