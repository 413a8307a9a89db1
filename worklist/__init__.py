"""The radiologists' web worklist: sign-in, the reading worklist (unread first, priority
order, paged), study pages with radiograph, heatmap and an answer form, admin pages for
users and the audit log, a JSON API for integrations, health and readiness.

``app.create_app(engine, config)`` builds the app (routes in ``app``; who may call what in
``auth``); ``server.run_web(settings)`` serves it with uvicorn, over TLS when configured.
Pages are server-rendered HTML; the only script is a same-origin viewer script. Clinical
decision support, not a diagnosis.
"""
