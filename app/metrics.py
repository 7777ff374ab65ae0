"""Prometheus metrics, defined once per process as prometheus-client intends; served at /metrics."""

from prometheus_client import Counter, Gauge, Histogram

TASKS_INGESTED = Counter("taskmanager_tasks_ingested_total", "Payloads received by ingest, by outcome", ["outcome"])
MESSAGES_PUBLISHED = Counter(
    "taskmanager_messages_published_total",
    "Messages sent to the queue, by priority class and result",
    ["priority", "result"],
)
STATUS_UPDATES = Counter("taskmanager_status_updates_total", "Tasks moved by update-status, by new status", ["status"])
FEISHU_CALLS = Counter(
    "taskmanager_feishu_calls_total", "Bitable API attempts, by endpoint and answer code", ["endpoint", "code"]
)
FEISHU_RETRIES = Counter("taskmanager_feishu_retries_total", "Bitable calls tried again, by endpoint", ["endpoint"])
FEISHU_LATENCY = Histogram(
    "taskmanager_feishu_call_seconds",
    "Bitable API attempt latency",
    ["endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REPLENISH_RUNS = Counter("taskmanager_replenish_runs_total", "Replenish cycles, by outcome", ["outcome"])
BOT_SENDS = Counter("taskmanager_bot_sends_total", "Feishu bot notices, by outcome", ["outcome"])
QUEUE_DEPTH = Gauge("taskmanager_queue_depth", "Ready messages in CELERY_QUEUE at the last look")
POOL_TASKS = Gauge("taskmanager_pool_tasks", "Tasks in the pool per status at the last count", ["status"])
REPORT_BACKLOG = Gauge("taskmanager_report_backlog", "Workers' reports accepted and not yet written to the table")
REPORT_BACKLOG_AGE = Gauge(
    "taskmanager_report_backlog_oldest_seconds", "How long the oldest report not yet written has waited (0: none)"
)
REPORTS_REFUSED = Gauge(
    "taskmanager_reports_refused",
    "Reports Feishu refused even as a bare status, set aside in the outbox's refused table",
)
