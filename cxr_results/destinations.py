"""``CXR_RESULT_DESTINATIONS``: where result objects are sent.

The setting is a comma-separated list of ``AE_TITLE@host:port`` entries (C-STORE), e.g.
``PACS@pacs.example.org:104,ARCHIVE@10.0.0.7:11112``; an IPv6 address goes in brackets
(``PACS@[fd00::7]:104``). An entry may instead be a DICOMweb base URL (STOW-RS,
:class:`DicomwebDestination`), e.g. ``https://pacs.example.org/dicom-web``: the objects
are POSTed to ``<base>/studies``. Empty (or only blanks and commas) means nothing is sent.

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

* or a DICOMweb URL: ``http://`` or ``https://``, a host, an optional port and path; no
  user name or password in it (credentials come from ``CXR_RESULT_DICOMWEB_TOKEN`` or
  ``CXR_RESULT_DICOMWEB_USERNAME``/``_PASSWORD``, so the URL can be logged and recorded),
  no query or fragment, at most 250 characters; not listed twice.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from cxr_results.errors import DestinationConfigError

__all__ = [
    "ALL_OBJECTS",
    "AnyDestination",
    "Destination",
    "DicomwebDestination",
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


@dataclass(frozen=True)
class DicomwebDestination:
    """One DICOMweb STOW-RS service to send results to (``cxr_results.stow``): its base
    URL, without credentials (they come from the settings), without a trailing '/'."""

    base_url: str
    objects: frozenset[ResultObject] = field(default=ALL_OBJECTS, compare=False)

    def wants(self, kind: ResultObject) -> bool:
        return kind in self.objects

    @property
    def studies_url(self) -> str:
        """Where STOW-RS stores (PS3.18 10.5)."""
        return f"{self.base_url}/studies"

    def __str__(self) -> str:
        return self.base_url


#: A C-STORE or a DICOMweb destination.
AnyDestination = Destination | DicomwebDestination

URL_MAX = 250


def parse_dicomweb_destination(
    entry: str, objects: frozenset[ResultObject] | None = None
) -> DicomwebDestination:
    """Parse one DICOMweb base URL entry (see the module docstring for the rules)."""
    text = entry.strip()
    shown = text.split("@")[-1][:80]  # never echo what may be credentials
    if len(text) > URL_MAX:
        raise DestinationConfigError(
            f"result destination ...{shown!r}: a DICOMweb URL has at most {URL_MAX} characters"
        )
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text) or not text.isascii():
        raise DestinationConfigError(
            f"result destination {shown!r}: a DICOMweb URL holds no spaces and only ASCII"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise DestinationConfigError(
            f"result destination {shown!r}: not a valid URL (host or port)"
        ) from None
    if parts.username is not None or parts.password is not None:
        raise DestinationConfigError(
            "a DICOMweb result destination holds a user name or password: remove it from "
            "the URL and set CXR_RESULT_DICOMWEB_TOKEN or CXR_RESULT_DICOMWEB_USERNAME and "
            "CXR_RESULT_DICOMWEB_PASSWORD"
        )
    if parts.scheme.lower() not in ("http", "https"):
        raise DestinationConfigError(
            f"result destination {shown!r}: a DICOMweb URL starts with http:// or https://"
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise DestinationConfigError(
            f"result destination {shown!r}: a DICOMweb base URL has no query or fragment"
        )
    host = parts.hostname or ""
    if host.startswith("[") or ":" in host:
        _check_host(f"[{host.strip('[]')}]", shown)
    else:
        _check_host(host, shown)
    if port is not None and not 1 <= port <= 65535:
        raise DestinationConfigError(f"result destination {shown!r}: port outside 1-65535")
    netloc = parts.netloc.lower()
    url = f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"
    return DicomwebDestination(url, ALL_OBJECTS if objects is None else objects)


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


def parse_destination(entry: str) -> AnyDestination:
    """Parse one ``AE_TITLE@host:port[objects]`` entry, or a DICOMweb base URL with the
    same optional ``[objects]`` suffix (rules in the module docstring)."""
    text, objects = split_objects(entry)
    if text.lower().startswith(("http://", "https://", "http:", "https:")):
        return parse_dicomweb_destination(text, objects)
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


def parse_destinations(value: str | None) -> tuple[AnyDestination, ...]:
    """Parse the whole setting; ``None`` or blank means no destination."""
    if value is None:
        return ()
    destinations: list[AnyDestination] = []
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
