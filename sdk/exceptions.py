"""The exceptions flightlog raises.

Exception tree::

    MlflowException                  every error flightlog raises on purpose
     +-- RestException               an error answered by a collector (carries the HTTP status)
     +-- FilterError                 a malformed search filter or order_by (names the position)

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

# HTTP status for each error code, as MLflow's server answers them.
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
