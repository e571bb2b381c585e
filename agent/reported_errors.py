"""Errors to raise at the next flush: those the collector reported for earlier
operations (a changed param, an unknown run) and conditions the agent noted."""

from __future__ import annotations

import logging
import threading
from typing import Any

from flightlog.core.exceptions import MlflowException

log = logging.getLogger("flightlog.agent")

MAX_KEPT_ERRORS = 1000


class ReportedErrors:
    """A bounded list of errors, raised (and forgotten) as one MlflowException."""

    def __init__(self) -> None:
        self._errors: list[dict[str, str]] = []
        self._notes: set[str] = set()  # one-off conditions already reported
        # Reentrant: a signal handler may run on a thread that holds it (see signals).
        self._lock = threading.RLock()

    def record(self, errors: list[dict[str, Any]]) -> None:
        """Keep the errors of a collector's answer (bounded: a stream of failing ops
        must not grow memory without end)."""
        clean = [
            {
                "op": str(e.get("op", "")),
                "error_code": str(e.get("error_code", "INTERNAL_ERROR")),
                "message": str(e.get("message", "")),
            }
            for e in errors
            if isinstance(e, dict)
        ]
        with self._lock:
            self._errors.extend(clean[: max(0, MAX_KEPT_ERRORS - len(self._errors))])

    def note(self, kind: str, message: str, code: str = "INVALID_PARAMETER_VALUE") -> None:
        """Report a condition at the next flush, once however often it happens before."""
        with self._lock:
            if kind in self._notes:
                return
            self._notes.add(kind)
        self.record([{"op": kind, "error_code": code, "message": message}])
        log.warning("flightlog: %s", message)

    def raise_if_any(self) -> None:
        """Raise (and forget) the errors kept since the last call."""
        with self._lock:
            errors, self._errors = self._errors, []
            self._notes.clear()  # a condition that persists is reported again
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise MlflowException(
                f"{first['message']}{more}", first.get("error_code", "INTERNAL_ERROR")
            )
