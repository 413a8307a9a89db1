"""The ``results`` role: deliver what was decided to the systems outside (today the
Secondary Capture + SR of each complete study to PACS over C-STORE; HL7 and webhooks will
live beside it). ``cxr-triage send-results`` runs it (compose service ``results``); it
consumes the results queue through the shared runner (``cxr_queue.runner``) and never
loads the model."""
