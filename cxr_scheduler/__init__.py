"""The ``scheduler`` role: the periodic jobs that keep every study moving, in a process
of its own (``cxr-triage schedule``, compose service ``scheduler``).

* ``reconciler``: re-enqueues what was committed but is in no worker's hands;
* ``completeness``: marks quiet studies complete and enqueues their results jobs.
* ``escalation``: escalates flagged studies left unread (an outbox the results sender
  delivers to the webhooks).

All are safe to run in several processes at once (``FOR UPDATE SKIP LOCKED``); one is
enough. The scheduler needs Postgres and Redis only: no DICOM port, no stored files, no
model."""
