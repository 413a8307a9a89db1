"""The radiologists' web worklist: sign-in, the reading worklist (unread first, priority
order, paged), study pages with radiograph, heatmap and an answer form, admin pages for
users and the audit log, a JSON API for integrations, health and readiness.

``app.create_app(engine, config)`` builds the app: one router per area in ``routes``
(``public``, ``session``, ``reading``, ``api``, ``admin``, ``ops``), the app's state and the
role checks as dependencies in ``deps``, how credentials are checked in ``auth``.
``server.run_web(settings)`` serves it with uvicorn, over TLS when configured. Pages are
server-rendered from the Jinja2 templates in ``templates`` (autoescaped; ``pages`` renders
them, ``present`` formats their values); the only script is a same-origin viewer script.
Clinical decision support, not a diagnosis.
"""
