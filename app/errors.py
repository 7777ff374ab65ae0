"""ServiceError and its subclasses, each carrying its HTTP status; they carry the error, never a result."""


class ServiceError(Exception):
    """An error the API renders as `{"error", "detail"}` with its own HTTP status."""

    status_code = 500
    error = "internal_error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class InvalidInput(ServiceError):
    status_code = 422
    error = "invalid_input"


class TooManyTasks(ServiceError):
    status_code = 413
    error = "too_many_tasks"


class NotFound(ServiceError):
    status_code = 404
    error = "not_found"


class Conflict(ServiceError):
    status_code = 409
    error = "conflict"


class StoreUnavailable(ServiceError):
    """The store stayed unreachable after retries; the same request may be sent again."""

    status_code = 503
    error = "store_unavailable"

    def __init__(self, detail: str, *, retry_after: int = 30):
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class StoreRejected(ServiceError):
    """The store refused the request for a reason retrying cannot fix (schema, permissions, limits)."""

    status_code = 502
    error = "store_rejected"


class CredentialsRejected(StoreRejected):
    """Feishu refused the app's id or secret: no call can be made until the settings are fixed."""


class QuotaExhausted(StoreRejected):
    """The Feishu tenant's monthly API quota is used up: every call fails until it resets, so none is retried."""

    error = "quota_exhausted"


class BrokerUnavailable(ServiceError):
    status_code = 503
    error = "broker_unavailable"

    def __init__(self, detail: str, *, retry_after: int = 30):
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class QueueMissing(ServiceError):
    """The workers' queue does not exist: a message sent now would be dropped silently."""

    status_code = 503
    error = "queue_missing"
