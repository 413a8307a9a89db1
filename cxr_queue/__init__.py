"""The queue contract between the listener (producer) and the workers (consumers).

The listener enqueues by task *name* with a small JSON payload (IDs and a storage URI,
never pixels), so it never imports the worker or torch. ``make_celery`` is the one place
that sets the broker options both sides must agree on.
"""

from cxr_queue.contract import (
    MAX_RETRY_COUNTDOWN_S,
    RESULTS_QUEUE,
    RESULTS_TASK,
    SCORE_TASK,
    ResultsJob,
    ScoreJob,
    enqueue_results,
    enqueue_score,
    make_celery,
)
from cxr_queue.lanes import Lane, choose_lane, header_asks_urgent, lane_queue, lane_queues
from cxr_queue.live import LiveJobs, live_instance_ids

__all__ = [
    "MAX_RETRY_COUNTDOWN_S",
    "RESULTS_QUEUE",
    "RESULTS_TASK",
    "SCORE_TASK",
    "Lane",
    "LiveJobs",
    "ResultsJob",
    "ScoreJob",
    "choose_lane",
    "enqueue_results",
    "enqueue_score",
    "header_asks_urgent",
    "lane_queue",
    "lane_queues",
    "live_instance_ids",
    "make_celery",
]
