"""The radiologists' web worklist: a small read-only FastAPI app over the triage database.

``app.create_app(engine)`` builds the app (routes: ``/``, ``/studies/{uid}``,
``/heatmaps/{uid}.png``, ``/api/worklist``, ``/healthz``); ``server.run_web(settings)``
serves it with uvicorn. Pages are plain server-rendered HTML with no scripts and no
external assets. Clinical decision support, not a diagnosis.
"""
