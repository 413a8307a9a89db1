"""The DICOM C-ECHO / C-STORE listener (pynetdicom SCP).

It writes each received instance to durable storage, records it in Postgres, answers
success only then, and enqueues a scoring job by task name after the commit. It never
imports torch, the model or the worker. The ingest rules live in :mod:`cxr_ingest`;
the C-STORE handler (:mod:`.handlers`) is its DICOM adapter.
"""
