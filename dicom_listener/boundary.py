"""The DICOM trust boundary below the C-STORE handler: who may connect, how many at once,
for how long, over TLS or not, and where received data sets are spooled.

pynetdicom's ``start_server`` alone lets 20 raw garbage connections lock every peer out
(each one holds an "association" slot until its ARTIM timer expires, and a TLS handshake
runs in the accept loop, so one silent TLS peer stalls the whole server), accepts any
called AE title and leaves the temp files of aborted transfers in the system temp folder
(issue 12, defect 9). Here:

* :class:`GuardedAssociationServer` closes a connection at accept when its source IP is
  outside ``CXR_ALLOWED_PEER_NETWORKS`` or when ``CXR_MAX_CONNECTIONS`` are open; a peer
  that already holds ``CXR_MAX_ASSOCIATIONS_PER_PEER`` connections is answered with an
  A-ASSOCIATE-RJ (transient, local limit exceeded) once its request arrives (closed at
  accept past 2 such at once). Only connections still in use count: released, aborted
  and closing associations do not (issue 20). Every refusal is logged with the peer's
  address and the reason. The TLS handshake runs in the connection's own thread,
  bounded by the ACSE timeout.
* :class:`ListenerAE` counts toward ``CXR_MAX_ASSOCIATIONS`` ("local limit exceeded")
  only peers that sent an A-ASSOCIATE-RQ, not connections still silent (those end when
  the ACSE timeout, pynetdicom's ARTIM timer, expires).
  With ``reuse_port`` it binds with ``SO_REUSEPORT``, so several listener processes
  share one port; every limit above is then per process.
* :func:`tls_context`: DICOM TLS (PS3.15 B.1 / BCP 195: TLS 1.2 or later), optionally
  requiring a client certificate signed by ``CXR_DICOM_TLS_CA``;
  :class:`CertificateAeBinding` ties each client certificate (subject CN or SHA-256
  fingerprint) to the calling AE titles it may use (``CXR_DICOM_TLS_CLIENT_AE_TITLES``):
  a peer presenting the certificate of AE X and calling as AE Y gets A-ASSOCIATE-RJ
  (1, 1, 3), with the reason logged.
* :func:`harden_state_machine`: a peer that aborts (or sends garbage) right after its
  A-ASSOCIATE-RQ races our accept; pynetdicom then raises ``InvalidEventError`` for the
  local accept in Sta13 (awaiting close) and its DUL thread dies (found by the fuzz).
  Our own late primitives are dropped in Sta13 instead, as PS3.8 9.2 intends.
* :func:`spool_to_staging` makes pynetdicom write received data sets into the storage's
  staging folder (never the system temp folder), hashed as they are written
  (:class:`cxr_ingest.ContentHasher`: :func:`received_digest` gives the C-STORE handler
  the content hash, so ingest never reads the file to hash it); :class:`ReceiveSpool`
  removes the file of a transfer that was cut off when its connection closes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pynetdicom import AE, dimse_messages, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.fsm import TRANSITION_TABLE, InvalidEventError, StateMachine
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from cxr_ingest import ContentDigest, ContentHasher

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: File name prefix of data sets being received (in the staging folder).
RECEIVE_PREFIX = "recv-"
#: Left-over receive files older than this are removed when a listener starts.
STALE_RECEIVE_S = 3600.0


@dataclass(frozen=True)
class PeerPolicy:
    """Who may open a connection, and how many at once."""

    allowed_networks: tuple[Network, ...] = ()
    max_per_peer: int = 4
    max_connections: int = 64
    handshake_timeout_s: float = 10.0
    #: Longest a single socket read or write may block (pynetdicom reads a PDU with
    #: blocking ``recv`` calls: without it, a peer that sends half a PDU and stalls holds
    #: its thread forever, past every DICOM timer).
    io_timeout_s: float = 60.0
    #: Every PDU's deadline, and the least bytes/s of a longer message (dicom_listener.pdu
    #: ``Pace``); 0: none.
    pdu_timeout_s: float = 10.0
    min_transfer_rate: float = 8192.0
    #: Connections over ``max_per_peer`` that one address may have waiting for their
    #: A-ASSOCIATE-RJ at once; more are closed at accept.
    max_refusals_per_peer: int = 2

    def allows(self, address: str) -> bool:
        if not self.allowed_networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allowed_networks if ip.version == net.version)


class ListenerAE(AE):
    """An AE whose association limit counts only peers that asked for an association
    and are still connected."""

    @property
    def active_associations(self) -> list[Association]:
        return [
            a
            for a in super().active_associations
            if holds_connection(a) and not _awaiting_request(a)
        ]


def holds_connection(assoc: Association) -> bool:
    """True while an association thread still has its connection: its DUL thread has not
    ended (or not started yet), and it is not over already: released, aborted, rejected,
    or closing (Sta13: our A-RELEASE-RP or A-ABORT is sent, only the socket's close is
    left). pynetdicom keeps an acceptor thread waiting for the A-ASSOCIATE-RQ until the
    ACSE timeout even after its peer closed the connection, and a released association's
    threads end some milliseconds after its peer has moved on: a C-ECHO followed at once
    by four C-STOREs from one address was refused at accept (issue 20)."""
    if not assoc.is_alive():
        return False
    if assoc.is_released or assoc.is_aborted or assoc.is_rejected:
        return False
    dul = getattr(assoc, "dul", None)
    if dul is None or dul.ident is None:
        return True
    if not dul.is_alive():
        return False
    try:
        state = str(dul.state_machine.current_state)
    except AttributeError:
        return True
    return state not in ("Sta1", "Sta13")


def _awaiting_request(assoc: Association) -> bool:
    """True for an acceptor whose peer connected but has sent no A-ASSOCIATE-RQ yet."""
    if not assoc.is_acceptor:
        return False
    try:
        return str(assoc.dul.state_machine.current_state) == "Sta2"
    except AttributeError:
        return False


def _address(client_address: Any) -> str:
    if isinstance(client_address, tuple) and client_address:
        return str(client_address[0])
    return str(client_address)


def peer_address(assoc: Association) -> str | None:
    """The requestor's IP address, or None when unknown."""
    try:
        return str(assoc.requestor.address)[:64]
    except (AttributeError, ValueError):
        return None


class _GuardedRequestHandler(RequestHandler):
    """Completes the TLS handshake in this connection's thread (bounded), then hands the
    socket to pynetdicom's association as usual."""

    server: GuardedAssociationServer

    def handle(self) -> None:
        address = _address(self.client_address)
        refusal = self.server.take_refusal(self.request)
        if refusal is not None:
            try:
                self._reject_over_limit(address, refusal)
            finally:
                self.server.release_refusal(address)
                self.server.release_pending(address)
            return
        started = False
        try:
            request = self.request
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(self.server.policy.handshake_timeout_s)
                try:
                    request.do_handshake()
                except (OSError, ValueError) as exc:
                    logger.warning(
                        "TLS handshake with %s failed (%s): connection closed",
                        address,
                        type(exc).__name__,
                    )
                    self.server.shutdown_request(request)
                    return
            if isinstance(request, socket.socket):
                request.settimeout(self.server.policy.io_timeout_s)
            # pynetdicom's handle(), with the hand-over made atomic: the connection stops
            # counting as pending in the same step as its association starts counting.
            # Counted twice in between, four parallel associations from one peer (the
            # per-peer limit) lost one at accept (issue 20).
            assoc = self._create_association()
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            with self.server.hand_over(address):
                assoc.start()
            started = True
        finally:
            if not started:
                self.server.release_pending(address)

    def _reject_over_limit(self, address: str, reason: str) -> None:
        """Answer a peer over its connection limit with A-ASSOCIATE-RJ (rejected-transient,
        service-provider (presentation), local-limit-exceeded: (2, 3, 2)) once its
        A-ASSOCIATE-RQ has arrived (within the ACSE timeout), then close. No association
        thread, no pynetdicom: the request is read and dropped."""
        request = self.request
        deadline = time.monotonic() + self.server.policy.handshake_timeout_s
        answered = False
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(self.server.policy.handshake_timeout_s)
                request.do_handshake()
            header = _read_exactly(request, 6, deadline)
            if len(header) == 6 and header[0] == 0x01:
                length = int.from_bytes(header[2:6], "big")
                if (
                    length <= _MAX_RQ_LENGTH
                    and len(_read_exactly(request, length, deadline)) == length
                ):
                    request.sendall(A_ASSOCIATE_RJ_LOCAL_LIMIT)
                    answered = True
        except (OSError, ValueError):
            pass
        finally:
            self.server.shutdown_request(request)
        logger.warning(
            "association from %s %s: %s",
            address,
            "rejected (A-ASSOCIATE-RJ 2, 3, 2: local limit exceeded)"
            if answered
            else "closed before its A-ASSOCIATE-RQ could be rejected",
            reason,
        )


#: A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): result 2 rejected-transient, source 3 DICOM UL
#: service-provider (presentation related function), reason 2 local-limit-exceeded.
A_ASSOCIATE_RJ_LOCAL_LIMIT: bytes = bytes([0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2])
#: The longest A-ASSOCIATE-RQ read before rejecting it (real ones are a few kB).
_MAX_RQ_LENGTH = 1 << 16


def _read_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with per-peer and total connection limits, an IP
    allow-list, and the TLS handshake moved out of the accept loop."""

    policy: PeerPolicy

    def __init__(
        self,
        ae: AE,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[PresentationContext],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[EventHandlerType] | None = None,
        *,
        policy: PeerPolicy,
        reuse_port: bool = False,
    ) -> None:
        self.policy = policy
        self.reuse_port = reuse_port
        self._pending: Counter[str] = Counter()
        self._refusing: Counter[str] = Counter()
        self._refusals: dict[int, str] = {}
        self._lock = threading.Lock()
        self.refused_connections = 0
        super().__init__(
            ae,
            address,
            ae_title,
            contexts,
            ssl_context,
            evt_handlers=evt_handlers,
            request_handler=_GuardedRequestHandler,
        )

    def server_bind(self) -> None:
        """pynetdicom's bind (``SO_REUSEADDR``), plus ``SO_REUSEPORT`` for a listener that
        shares its port with sibling processes (``CXR_LISTENER_PROCESSES``): the kernel then
        hands each new connection to one of them."""
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            # pynetdicom handshakes here, in the accept loop: one silent peer would stall
            # every other. _GuardedRequestHandler does it in the connection's thread.
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False
            )
        return client_socket, address

    def _open_by_peer(self) -> Counter[str]:
        """Connections per source IP: associations alive plus connections not yet handed
        to one (the TLS handshake); connections being rejected are not counted."""
        counts = Counter(self._pending)
        counts.subtract(self._refusing)
        for assoc in ThreadedAssociationServer.active_associations.fget(self):  # type: ignore[attr-defined]
            address = peer_address(assoc)
            if address is not None and holds_connection(assoc):
                counts[address] += 1
        return counts

    def _closing(self) -> int:
        """Connections whose association is over but whose socket is still open (Sta13:
        waiting for the peer's close, at most the ARTIM timer). They take no peer's slot
        (a released C-ECHO must not refuse the same sender's next association), but they
        count against ``max_connections``: a flood of garbage, each connection aborted and
        left open by its peer, cannot hold sockets and threads without bound."""
        closing = 0
        for assoc in ThreadedAssociationServer.active_associations.fget(self):  # type: ignore[attr-defined]
            dul = getattr(assoc, "dul", None)
            alive = assoc.is_alive() and dul is not None and dul.is_alive()
            if alive and not holds_connection(assoc):
                closing += 1
        return closing

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = _address(client_address)
        if not self.policy.allows(address):
            self._refuse(address, "source address outside CXR_ALLOWED_PEER_NETWORKS")
            return False
        with self._lock:
            counts = self._open_by_peer()
            total = sum(counts.values()) + sum(self._refusing.values()) + self._closing()
            if total >= self.policy.max_connections:
                self._refuse(address, f"{total} connections open (CXR_MAX_CONNECTIONS)")
                return False
            if counts[address] >= self.policy.max_per_peer:
                why = (
                    f"it already holds {counts[address]} connections "
                    "(CXR_MAX_ASSOCIATIONS_PER_PEER)"
                )
                if self._refusing[address] >= self.policy.max_refusals_per_peer:
                    self._refuse(address, why)
                    return False
                # Answered with A-ASSOCIATE-RJ (transient) by the handler's thread.
                self._refusing[address] += 1
                self._refusals[id(request)] = why
            self._pending[address] += 1
        return True

    def take_refusal(self, request: Any) -> str | None:
        """Why ``request`` (a connection accepted over its peer's limit) is to be
        rejected; None for a connection to serve."""
        with self._lock:
            return self._refusals.pop(id(request), None)

    def release_refusal(self, address: str) -> None:
        with self._lock:
            self._refusing[address] -= 1
            if self._refusing[address] <= 0:
                del self._refusing[address]

    def release_pending(self, address: str) -> None:
        with self._lock:
            self._release_pending(address)

    def _release_pending(self, address: str) -> None:
        self._pending[address] -= 1
        if self._pending[address] <= 0:
            del self._pending[address]

    @contextlib.contextmanager
    def hand_over(self, address: str) -> Iterator[None]:
        """Start a pending connection's association (the ``with`` body) and stop counting
        it as pending, as one step for :meth:`verify_request`."""
        with self._lock:
            try:
                yield
            finally:
                self._release_pending(address)

    def _refuse(self, address: str, why: str) -> None:
        self.refused_connections += 1
        logger.warning("connection from %s closed at accept: %s", address, why)


def tls_context(
    certificate_file: Path, private_key_file: Path, ca_file: Path | None = None
) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+). With ``ca_file`` every peer must present a
    client certificate that CA signed (PS3.15 B.1 "authenticated" profile)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate_file), str(private_key_file))
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def certificate_identities(der: bytes, decoded: dict[str, Any]) -> list[str]:
    """The names a client certificate may be bound by: its SHA-256 fingerprint
    (``sha256:<hex>``) and each subject common name (CN)."""
    import hashlib

    names = [f"sha256:{hashlib.sha256(der).hexdigest()}"]
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(str(value))
    return names


@dataclass(frozen=True)
class CertificateAeBinding:
    """Which calling AE titles each client certificate may use (issue 20): keys are a
    subject CN or ``sha256:<hex fingerprint>`` (lower case), values the AE titles. A
    certificate bound by none of its names may use no AE title. Bound to
    ``EVT_REQUESTED``, so the association is refused before any data moves."""

    titles: dict[str, frozenset[str]]

    @classmethod
    def of(cls, mapping: dict[str, list[str]]) -> CertificateAeBinding:
        return cls({k.strip(): frozenset(t.strip() for t in v) for k, v in mapping.items()})

    def allowed(self, identities: Sequence[str]) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for name in identities:
            out |= self.titles.get(name, frozenset())
        return out

    def on_requested(self, event: Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive  # the A-ASSOCIATE-RQ (ae_title is set later)
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        sock = getattr(assoc.dul.socket, "socket", None)
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if not der:
            reason = "no client certificate"
            identities: list[str] = []
        else:
            identities = certificate_identities(der, sock.getpeercert() or {})  # type: ignore[union-attr]
            allowed = self.allowed(identities)
            if calling in allowed:
                return
            reason = (
                f"its certificate may call as {', '.join(sorted(allowed))}"
                if allowed
                else "its certificate is bound to no AE title"
            )
        cn = next((i for i in identities if not i.startswith("sha256:")), None)
        logger.warning(
            "association from %s refused: calling AE title %r, %s (certificate %s)",
            assoc.requestor.address,
            calling,
            reason,
            cn or (identities[0] if identities else "none"),
        )
        # A-ASSOCIATE-RJ (1, 1, 3): calling AE title not recognised (statuses.CALLING_AE_REJECTION);
        # then as pynetdicom's own rejections: EVT_REJECTED, and the DUL sends it before
        # the socket is closed
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()


# ---------------------------------------------------------------------------------------
# Where received data sets are spooled


class HashingFile:
    """A receive file that hashes what is written to it (:class:`ContentHasher`).

    pynetdicom writes the preamble, the File Meta and then each P-DATA fragment with
    ``write`` and flushes ``file``; everything else is the wrapped temp file's."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._hasher = ContentHasher()
        self.name = handle.name

    def write(self, data: bytes) -> int:
        written = self._handle.write(data)
        self._hasher.update(data)
        return written

    def digest(self) -> ContentDigest | None:
        return self._hasher.digest()

    def close(self) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


#: Receive files being written or handled, by path: :func:`received_digest`.
_HASHING: weakref.WeakValueDictionary[str, HashingFile] = weakref.WeakValueDictionary()


def received_digest(path: Path) -> ContentDigest | None:
    """The content hash of a receive file this process wrote (None: not ours, or not
    hashable while written: ingest then reads it once to hash it)."""
    handle = _HASHING.get(str(path))
    return handle.digest() if handle is not None else None


@dataclass
class ReceiveSpool:
    """Receive files of one server: in the folder ``staging_dir()`` returns (the
    storage's staging folder, created on demand), removed when their connection closes
    (or its association thread has ended without closing it) unless the C-STORE handler
    already moved them away."""

    staging_dir: Callable[[], Path]
    _open: weakref.WeakKeyDictionary[Association, list[IO[bytes]]] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_file(self, assoc: Association | None, **kwargs: Any) -> IO[bytes]:
        self._sweep_ended()
        try:
            handle: IO[bytes] = _ORIGINAL_TEMPFILE(
                dir=self.staging_dir(), prefix=RECEIVE_PREFIX, **kwargs
            )
        except OSError:
            # Storage unavailable: the handler answers 0xA701; the file goes where it can
            # and is still removed when the connection closes.
            handle = _ORIGINAL_TEMPFILE(prefix=RECEIVE_PREFIX, **kwargs)
        hashing = HashingFile(handle)
        _HASHING[str(hashing.name)] = hashing
        if assoc is not None:
            with self._lock:
                self._open.setdefault(assoc, []).append(hashing)  # type: ignore[arg-type]
        return hashing  # type: ignore[return-value]

    def _remove(self, assoc: Association, handles: list[IO[bytes]]) -> None:
        removed = 0
        for handle in handles:
            with contextlib.suppress(OSError):
                handle.close()  # transfer over: nobody writes to it any more
            with contextlib.suppress(FileNotFoundError):
                Path(handle.name).unlink()
                removed += 1
        if removed:
            logger.info(
                "removed %d partial receive file(s) of a closed association from %s",
                removed,
                peer_address(assoc) or "?",
            )

    def _sweep_ended(self) -> None:
        """Files of associations whose thread ended without EVT_CONN_CLOSE."""
        with self._lock:
            ended = [(a, self._open.pop(a)) for a in list(self._open) if not a.is_alive()]
        for assoc, handles in ended:
            self._remove(assoc, handles)

    def on_connection_closed(self, event: Event) -> None:
        """EVT_CONN_CLOSE: remove what a cut-off transfer left behind."""
        with self._lock:
            handles = self._open.pop(event.assoc, [])
        self._remove(event.assoc, handles)
        self._sweep_ended()

    def sweep(self, older_than_s: float = STALE_RECEIVE_S) -> int:
        """Remove receive files older than ``older_than_s`` (left by a crashed process)."""
        removed = 0
        cutoff = time.time() - older_than_s
        with contextlib.suppress(OSError):
            for path in self.staging_dir().glob(f"{RECEIVE_PREFIX}*"):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
        return removed


_SPOOLS: weakref.WeakKeyDictionary[ThreadedAssociationServer, ReceiveSpool] = (
    weakref.WeakKeyDictionary()
)
_ORIGINAL_TEMPFILE = tempfile.NamedTemporaryFile
_install_lock = threading.Lock()


def _current_association() -> Association | None:
    """The association whose DUL (or own) thread is running."""
    thread = threading.current_thread()
    if isinstance(thread, Association):
        return thread
    assoc = getattr(thread, "_assoc", None)
    return assoc if isinstance(assoc, Association) else None


def _spooled_tempfile(*args: Sequence[Any], **kwargs: Any) -> IO[bytes]:
    """Stands in for ``NamedTemporaryFile`` in ``pynetdicom.dimse_messages``: a received
    data set goes to its server's staging folder."""
    assoc = _current_association()
    server = getattr(assoc, "_server", None) if assoc is not None else None
    spool = _SPOOLS.get(server) if server is not None else None
    if spool is None or args or "dir" in kwargs:
        return _ORIGINAL_TEMPFILE(*args, **kwargs)  # type: ignore[call-overload,no-any-return]
    return spool.new_file(assoc, **kwargs)


def spool_to_staging(
    server: ThreadedAssociationServer, staging_dir: Callable[[], Path]
) -> ReceiveSpool:
    """Make ``server``'s received data sets go to ``staging_dir``; returns the spool
    (bind its ``on_connection_closed`` to EVT_CONN_CLOSE)."""
    with _install_lock:
        setattr(dimse_messages, "NamedTemporaryFile", _spooled_tempfile)  # noqa: B010
        spool = ReceiveSpool(staging_dir)
        _SPOOLS[server] = spool
    return spool


# ---------------------------------------------------------------------------------------
# pynetdicom's state machine


def harden_state_machine() -> None:
    """Two fixes to pynetdicom's DUL state machine, both found by the fuzz:

    * drop a local service-user primitive (our A-ASSOCIATE accept/reject, P-DATA,
      release) that arrives while the connection is already closing (Sta13); pynetdicom
      raises ``InvalidEventError`` there and kills the DUL thread;
    * when handling an event raises (a P-DATA naming a presentation context that was
      never accepted gave ``KeyError`` in pynetdicom's DIMSE decoder), treat it as an
      invalid PDU (Evt19: A-ABORT, then close) instead of letting the DUL thread die with
      the socket and the partial receive file left open.
    """
    original = StateMachine.do_action
    if getattr(original, "_cxr_hardened", False):
        return

    def do_action(self: StateMachine, event: str) -> None:
        if self.current_state == "Sta13" and (event, "Sta13") not in TRANSITION_TABLE:
            logger.debug("dropped %s: the connection is already closing (Sta13)", event)
            return
        try:
            original(self, event)
        except InvalidEventError:
            raise
        except Exception as exc:
            state = self.current_state
            if event == "Evt19" or ("Evt19", state) not in TRANSITION_TABLE:
                raise
            logger.warning(
                "protocol error (%s on %s in %s): aborting the association",
                type(exc).__name__,
                event,
                state,
            )
            self.dul._kill_thread = False  # undo pynetdicom's kill: abort properly first
            original(self, "Evt19")

    do_action._cxr_hardened = True  # type: ignore[attr-defined]
    StateMachine.do_action = do_action  # type: ignore[method-assign]


#: Why an A-ASSOCIATE-RJ was sent, by (source, diagnostic) (PS3.8 Table 9-21).
_REJECT_REASONS: dict[tuple[int, int], str] = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised (CXR_ALLOWED_CALLING_AE_TITLES)",
    (1, 7): "called AE title not recognised (CXR_AE_TITLE)",
    (2, 1): "no reason given (user identity)",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (CXR_MAX_ASSOCIATIONS)",
}


def log_rejections() -> None:
    """Log every A-ASSOCIATE-RJ pynetdicom sends, with the peer's address, calling AE
    title and the reason (pynetdicom says only "Rejecting Association", at INFO: a
    listener rejecting every sender for 400 s logged nothing, issue 20). Idempotent."""
    original = ACSE.send_reject
    if getattr(original, "_cxr_logged", False):
        return

    def send_reject(self: ACSE, result: int, source: int, diagnostic: int) -> None:
        try:
            calling = str(self.assoc.requestor.ae_title).strip()[:16]
        except (AttributeError, ValueError):
            calling = "?"
        logger.warning(
            "association from %s (calling AE title %s) rejected (A-ASSOCIATE-RJ %d, %d, %d: "
            "%s, %s)",
            peer_address(self.assoc) or "?",
            calling,
            result,
            source,
            diagnostic,
            "permanent" if result == 1 else "transient",
            _REJECT_REASONS.get((source, diagnostic), "see PS3.8 Table 9-21"),
        )
        original(self, result, source, diagnostic)

    send_reject._cxr_logged = True  # type: ignore[attr-defined]
    ACSE.send_reject = send_reject  # type: ignore[method-assign]
