"""The ``results`` role: deliver what was decided to the systems outside: the Secondary
Capture + SR of each complete study to PACS over C-STORE, an HL7 ORU^R01 to the RIS over
MLLP (``cxr_sender.hl7``) and the escalation webhooks. ``cxr-triage send-results`` runs it
(compose service ``results``); it consumes the results queue through the shared runner
(``cxr_queue.runner``) and never loads the model."""
