"""Start the listener: in-process and non-blocking (tests, ``up``) or blocking (``listen``).

With ``CXR_LISTENER_PROCESSES`` > 1, ``cxr-triage listen`` runs that many children of
this listener on one port (``cxr_triage.cli``); each is told its index
(``CXR_LISTENER_PROCESS_INDEX``): it binds with ``SO_REUSEPORT`` and child i serves
metrics on ``CXR_METRICS_PORT`` + i. The listener only listens: the reconciler and the
study completeness monitor are the ``scheduler`` role's (``cxr_scheduler``,
``cxr-triage schedule``). Every child keeps the same durability: a success status still
means the file is fsynced and its row committed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom.config
from celery import Celery
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine

from cxr_common.lifecycle import stop_on_signals
from cxr_common.metrics import MetricsServer
from cxr_common.settings import ListenerSettings
from cxr_common.storage import open_storage
from cxr_imaging import decodable_transfer_syntaxes
from cxr_ingest import load_or_create_patient_key
from cxr_results import load_or_create_uid_root
from dicom_listener import metrics as listener_metrics
from dicom_listener.boundary import (
    CertificateAeBinding,
    GuardedAssociationServer,
    ListenerAE,
    PeerPolicy,
    harden_state_machine,
    log_rejections,
    spool_to_staging,
    tls_context,
)
from dicom_listener.handlers import ACCEPTED_SOP_CLASSES, StoreHandler, handle_echo
from dicom_listener.loopback import LOOPBACK_SOP_CLASSES, LoopbackGuard
from dicom_listener.pdu import bounded_fast_reads

logger = logging.getLogger(__name__)


def configure_pynetdicom() -> None:
    """Process-wide pynetdicom options the listener relies on.

    Received data sets go straight to a temp file (memory stays flat on large images)
    and request identifiers, which hold patient data, are never logged (nor header values
    in pydicom's validation warnings); a peer's abort
    racing our accept no longer kills pynetdicom's DUL thread."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    # Hostile headers are judged by our own checks; pydicom's validation warnings would
    # only echo header values (patient names among them) to stderr.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    harden_state_machine()
    log_rejections()
    bounded_fast_reads()


@dataclass
class ListenerHandle:
    """A running listener. ``port`` is the bound port (settings' port 0 = a free one)."""

    host: str
    port: int
    ae_title: str
    server: ThreadedAssociationServer
    _stopped: bool = field(default=False, repr=False)
    metrics: MetricsServer | None = None

    def shutdown(self) -> None:
        """Stop accepting associations and end the open ones."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        if self.metrics is not None:
            self.metrics.close()
        logger.info("listener %s on port %d stopped", self.ae_title, self.port)


def build_ae(settings: ListenerSettings) -> AE:
    """The application entity: our AE title, contexts, allow-list, limits and timeouts."""
    ae = ListenerAE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.dicom_max_pdu_bytes
    ae.acse_timeout = settings.acse_timeout_s  # also the acceptor's ARTIM timer
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    # Anyone naming another called AE title is refused with A-ASSOCIATE-RJ (1, 1, 7):
    # see statuses.CALLED_AE_REJECTION. Routers that rewrite it: accept_any_called_ae_title.
    ae.require_called_aet = not settings.accept_any_called_ae_title
    syntaxes = decodable_transfer_syntaxes()
    ae.add_supported_context(Verification)
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    for sop_class in LOOPBACK_SOP_CLASSES:  # our own SRs forwarded back: see loopback
        ae.add_supported_context(sop_class, syntaxes)
    if settings.allowed_calling_ae_titles:
        # Anyone else is refused with A-ASSOCIATE-RJ (1, 1, 3): see statuses.CALLING_AE_REJECTION.
        ae.require_calling_aet = list(settings.allowed_calling_ae_titles)
    return ae


def start_listener(
    settings: ListenerSettings, engine: Engine, celery_app: Celery
) -> ListenerHandle:
    """Start the SCP in background threads; return at once."""
    configure_pynetdicom()
    storage = open_storage(settings.resolved_storage_uri)
    try:
        storage.staging_dir()
    except OSError as exc:
        # Keep listening: every C-STORE answers 0xA701 until storage is back.
        logger.error(
            "storage %s is not writable yet: %s", settings.resolved_storage_uri, exc.strerror
        )
    uid_root = load_or_create_uid_root(settings.uid_root_file, settings.uid_root)
    store = StoreHandler(
        engine,
        storage,
        celery_app,
        settings.queue_name,
        limits=settings.decode_limits(),
        loopback=LoopbackGuard(uid_root),
        patient_key=load_or_create_patient_key(
            settings.patient_key_file, settings.patient_key_value()
        ),
        urgent_ae_titles=settings.urgent_calling_ae_titles,
    )
    ae = build_ae(settings)
    handlers: list[evt.EventHandlerType] = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, _counted(store)),
        *listener_metrics.event_handlers(),
    ]
    ssl_context = None
    if settings.dicom_tls_cert is not None and settings.dicom_tls_key is not None:
        ssl_context = tls_context(
            settings.dicom_tls_cert, settings.dicom_tls_key, settings.dicom_tls_ca
        )
    if settings.dicom_tls_client_ae_titles:
        binding = CertificateAeBinding.of(settings.dicom_tls_client_ae_titles)
        handlers.append((evt.EVT_REQUESTED, binding.on_requested))
    policy = PeerPolicy(
        allowed_networks=tuple(settings.allowed_peer_networks),
        max_per_peer=settings.max_associations_per_peer,
        max_connections=settings.max_connections,
        handshake_timeout_s=settings.acse_timeout_s,
        io_timeout_s=settings.network_timeout_s,
        pdu_timeout_s=settings.pdu_timeout_s,
        min_transfer_rate=settings.min_transfer_rate,
    )
    server = ae.make_server(
        (settings.dicom_host, settings.dicom_port),
        ssl_context=ssl_context,
        evt_handlers=handlers,
        server_class=GuardedAssociationServer,
        policy=policy,
        reuse_port=settings.listener_process_index is not None,
    )
    spool = spool_to_staging(server, storage.staging_dir)
    swept = spool.sweep()
    if swept:
        logger.info("removed %d stale partial receive file(s) from staging", swept)
    server.bind(evt.EVT_CONN_CLOSE, spool.on_connection_closed)
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)
    port = int(server.server_address[1])
    index = settings.listener_process_index
    logger.info(
        "listener %s%s on %s:%d (%s, max %d associations, %d per peer; calling AE "
        "allow-list: %s; peer networks: %s; called AE title: %s; storage %s)",
        settings.ae_title,
        "" if index is None else f" (process {index}, shared port)",
        settings.dicom_host,
        port,
        "DICOM TLS" + (" with client certificates" if settings.dicom_tls_ca else "")
        if ssl_context
        else "no TLS",
        settings.max_associations,
        settings.max_associations_per_peer,
        ",".join(settings.allowed_calling_ae_titles) or "any",
        ",".join(map(str, settings.allowed_peer_networks)) or "any",
        "any" if settings.accept_any_called_ae_title else settings.ae_title,
        settings.resolved_storage_uri,
    )
    if index and settings.metrics_port:
        settings = settings.with_overrides(metrics_port=settings.metrics_port + index)
    metrics = listener_metrics.serve(settings)
    return ListenerHandle(
        settings.dicom_host,
        port,
        settings.ae_title,
        server,
        metrics=metrics,
    )


def _counted(store: StoreHandler) -> Callable[[Event], Dataset]:
    """The C-STORE handler, each answer (a status data set) counted in the metrics."""

    def handle(event: Event) -> Dataset:
        answer = store(event)
        listener_metrics.observe_store(int(answer.Status))
        return answer

    return handle


def run_listener(settings: ListenerSettings) -> int:
    """Run the listener until SIGINT/SIGTERM, then stop cleanly. Returns the exit code."""
    from cxr_db import make_engine
    from cxr_queue import make_celery

    engine = make_engine(settings.database_url_value())
    celery_app = make_celery(settings.broker_url_value(), settings.queue_name)
    try:
        with stop_on_signals("the listener") as stop:
            try:
                handle = start_listener(settings, engine, celery_app)
            except OSError as exc:
                logger.error(
                    "cannot listen on %s:%d: %s", settings.dicom_host, settings.dicom_port, exc
                )
                return 1
            try:
                stop.wait()
            finally:
                handle.shutdown()
        return 0
    finally:
        engine.dispose()
