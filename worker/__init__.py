"""The scoring worker: Celery tasks that decode, check eligibility, score in batches,
render Grad-CAM heatmaps and write results to Postgres.

Modules: ``batching`` (in-process micro-batches across concurrent tasks), ``pipeline``
(one instance from storage to a database row), ``outcomes`` (what a job did), ``tasks``
(the Celery task and retries), ``app`` (process start-up: model loaded once, Celery
configured).
"""
