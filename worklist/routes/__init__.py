"""The web app's routes, one ``APIRouter`` per area (``worklist.app`` includes them all):

- ``public``: ``/healthz`` and ``/static/viewer.js`` (no credentials).
- ``session``: ``/sign-in`` and ``/sign-out``.
- ``account`` (any signed-in user): ``/account/password``.
- ``reading`` (radiologist): the worklist, study pages, claims, answers, radiographs, heatmaps and
  the model card.
- ``api``: the JSON API (``/api/worklist`` and answers for radiologists, ``/api/audit`` for
  admins).
- ``admin`` (admin): the audit log and the users page.
- ``ops`` (ops): ``/readyz`` and the health page; ``/metrics`` is ``worklist.metrics_route``.

Roles come from ``worklist.deps``; the app's state (engine, configuration) too.
"""
