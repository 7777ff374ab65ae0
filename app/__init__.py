"""Task Manager for MQ: a task pool in Feishu Bitable (or SQLite) that keeps a Celery queue fed."""
