"""The exceptions flightlog raises.

Exception tree::

    Exception
     +-- MlflowException             every error flightlog raises to a caller on purpose
     |    +-- RestException          an error answered by a collector (carries the HTTP status)
     |    +-- FilterError            a malformed search filter or order_by (names the position)
     |    +-- WireError              an ingest batch that does not follow the wire format (400)
     |    +-- BodyTooLarge           a request body over the collector's limit (413)
     |    +-- SettingError           an environment variable set to a value it cannot take
     +-- ConnectionError
     |    +-- CollectorUnavailable   the collector could not be reached; the agent retries/spools
     +-- SpoolFull                   the disk spool is at its byte cap (the agent drops and counts)
     +-- Overloaded                  the collector's ingest budget is spent (503 + Retry-After)

The last three never reach user code: the agent and the collector turn them into retries,
counted drops and HTTP answers.

``error_code`` uses MLflow's names (``INVALID_PARAMETER_VALUE``,
``RESOURCE_DOES_NOT_EXIST``, ``RESOURCE_ALREADY_EXISTS``, ``BAD_REQUEST``,
``INTERNAL_ERROR``), so code that inspects MLflow errors keeps working.
"""

from __future__ import annotations

INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"
RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
BAD_REQUEST = "BAD_REQUEST"
INTERNAL_ERROR = "INTERNAL_ERROR"
INVALID_STATE = "INVALID_STATE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
UNAUTHENTICATED = "UNAUTHENTICATED"

# HTTP status for each error code on flightlog's own endpoints. MLflow's server answers
# the same except INVALID_STATE, which it sends as 500; the collector's MLflow REST API
# keeps that (collector/rest.py MLFLOW_HTTP_STATUS). Here a state conflict is the caller's
# error, so 400.
HTTP_STATUS: dict[str, int] = {
    INVALID_PARAMETER_VALUE: 400,
    BAD_REQUEST: 400,
    INVALID_STATE: 400,
    RESOURCE_DOES_NOT_EXIST: 404,
    RESOURCE_ALREADY_EXISTS: 400,
    RESOURCE_EXHAUSTED: 429,
    UNAUTHENTICATED: 401,
    INTERNAL_ERROR: 500,
}


class MlflowException(Exception):
    """An error with an MLflow error code; the base of every flightlog error."""

    def __init__(self, message: str, error_code: str = INTERNAL_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    def http_status(self) -> int:
        """The HTTP status a server answers this error with."""
        return HTTP_STATUS.get(self.error_code, 500)

    def to_dict(self) -> dict[str, str]:
        """The JSON error body MLflow's REST API uses."""
        return {"error_code": self.error_code, "message": self.message}


class RestException(MlflowException):
    """An error a collector answered with."""

    def __init__(self, message: str, error_code: str = INTERNAL_ERROR, status: int = 500) -> None:
        super().__init__(message, error_code)
        self.status = status


class FilterError(MlflowException):
    """A search filter or order_by clause that cannot be parsed or does not type-check."""

    def __init__(self, message: str, position: int | None = None, text: str | None = None) -> None:
        where = f" at position {position}" if position is not None else ""
        shown = message + where
        if text is not None and position is not None and "\n" not in text:
            # The text on a line of its own, so the caret lines up under the position.
            shown += f":\n  {text}\n  {' ' * position}^"
        super().__init__(shown, INVALID_PARAMETER_VALUE)
        self.position = position


class WireError(MlflowException):
    """A batch that does not follow the wire format."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Malformed ingest batch: {message}", BAD_REQUEST)


class CollectorUnavailable(ConnectionError):
    """The collector could not be reached or dropped the connection."""


class SpoolFull(Exception):
    """The record would take the spool past its byte cap, or the disk refused it."""


class BodyTooLarge(MlflowException):
    """A request body over the configured maximum, once decoded (HTTP 413)."""

    def __init__(
        self, size: int, limit: int, what: str = "Ingest batch", hint: str | None = None
    ) -> None:
        if hint is None:
            hint = (
                "(--ingest-max-body-bytes); send smaller batches (FLIGHTLOG_BATCH_POINTS)."
                if what == "Ingest batch"
                else "(decoded, whatever the Content-Encoding)."
            )
        super().__init__(
            f"{what} of {size} bytes or more is larger than the collector's limit of "
            f"{limit} bytes {hint}",
            BAD_REQUEST,
        )

    def http_status(self) -> int:
        return 413


class Overloaded(Exception):
    """The ingest budget is spent: answer 503 and ask the client to come back later."""

    def __init__(self, retry_after: int, pending: int) -> None:
        super().__init__(
            f"The collector is busy ({pending} bytes of batches in flight); "
            f"retry in {retry_after}s."
        )
        self.retry_after = retry_after


class SettingError(MlflowException, ValueError):
    """An environment variable whose value does not parse; the message names it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, INVALID_PARAMETER_VALUE)
