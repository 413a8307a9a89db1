"""``python -m cxr_triage`` is the ``cxr-triage`` command."""

from cxr_triage.cli import main

raise SystemExit(main())
