"""One error middleware for every endpoint: authentication, then errors as JSON or msgpack.

Two shapes, by path. MLflow's API (``/api/2.0/mlflow``, ``/api/2.0/mlflow-artifacts``,
``/api/3.0/mlflow``, their ``/ajax-api`` twins, and ``/get-artifact``) answers as
MLflow's server does: ``{"error_code", "message", "sqlstate", "error_class"}`` JSON (the
last two MLflow 3's error classification) with MLflow's HTTP status for
the code (it answers INVALID_STATE with 500, for one). flightlog's own endpoints
(``/api/flightlog/...``, ``/health``) answer the same fields with flightlog's status table
(:meth:`MlflowException.http_status`), in msgpack when the client speaks msgpack (the
SDK and agent) and in JSON otherwise (curl, browsers). A handler raises; it never
builds an error response itself, and the collector never dies of a request.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from flightlog.collector.state import COLLECTOR, MSGPACK
from flightlog.collector.ui import is_public_path
from flightlog.core.exceptions import (
    BAD_REQUEST,
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    MlflowException,
)
from flightlog.core.wire import pack

log = logging.getLogger("flightlog.collector")

ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"
#: Path prefixes served in MLflow's shape.
MLFLOW_PREFIXES = (
    "/api/2.0/mlflow",
    "/ajax-api/2.0/mlflow",
    "/api/3.0/mlflow",
    "/ajax-api/3.0/mlflow",
    "/get-artifact",
)

# MLflow's ERROR_CODE_TO_HTTP_STATUS for the codes flightlog raises. It differs from the
# collector's own table in one place: MLflow answers INVALID_STATE with 500.
MLFLOW_HTTP_STATUS: dict[str, int] = {
    INVALID_PARAMETER_VALUE: 400,
    BAD_REQUEST: 400,
    RESOURCE_ALREADY_EXISTS: 400,
    RESOURCE_DOES_NOT_EXIST: 404,
    ENDPOINT_NOT_FOUND: 404,
    UNAUTHENTICATED: 401,
    RESOURCE_EXHAUSTED: 429,
    INVALID_STATE: 500,
    INTERNAL_ERROR: 500,
}

# MLflow 3's error classification (mlflow/error_classification.py), sent beside the code:
# (sqlstate, error_class) for the codes flightlog raises.
_INVALID = ("KAM00", "INVALID_PARAMETER_VALUE")
MLFLOW_ERROR_CLASS: dict[str, tuple[str, str]] = {
    INVALID_PARAMETER_VALUE: _INVALID,
    BAD_REQUEST: _INVALID,
    RESOURCE_ALREADY_EXISTS: ("KAM00", "RESOURCE_ALREADY_EXISTS"),
    RESOURCE_DOES_NOT_EXIST: ("KAM00", "RESOURCE_NOT_FOUND"),
    ENDPOINT_NOT_FOUND: ("KAM00", "RESOURCE_NOT_FOUND"),
    INVALID_STATE: ("XXM00", "CLIENT_INTERNAL_ERROR"),
    INTERNAL_ERROR: ("XXM00", "CLIENT_INTERNAL_ERROR"),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_mlflow_path(path: str) -> bool:
    """Whether a path belongs to MLflow's API (answered in MLflow's error shape)."""
    # "/api/2.0/mlflow" also starts "/api/2.0/mlflow-artifacts": one prefix covers both.
    return path.startswith(MLFLOW_PREFIXES)


def error_response(
    request: web.Request, code: str, message: str, status: int | None = None
) -> web.Response:
    """The error body for ``request``'s path, with the status for ``code`` unless given."""
    body = {"error_code": code, "message": message}
    if is_mlflow_path(request.path):
        if code in MLFLOW_ERROR_CLASS:
            body["sqlstate"], body["error_class"] = MLFLOW_ERROR_CLASS[code]
        return web.Response(
            status=status or MLFLOW_HTTP_STATUS.get(code, 500),
            body=orjson.dumps(body),
            content_type="application/json",
        )
    if status is None:
        status = MlflowException(message, code).http_status()
    # msgpack for the SDK (it sends msgpack), JSON for everyone else (curl, browsers).
    if request.content_type == MSGPACK or MSGPACK in request.headers.get("Accept", ""):
        return web.Response(status=status, body=pack(body), content_type=MSGPACK)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _authorized(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    # surrogateescape: a header that is not UTF-8 is a wrong token, not a crash.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode())


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the token, run the handler, and answer every failure with an error body."""
    collector = request.app[COLLECTOR]
    collector.last_activity = time.monotonic()
    token = collector.config.token
    # /health and the web UI's page and code (which hold no data) answer without it.
    public = request.path == "/health" or is_public_path(request.path)
    if token and not public and not _authorized(request, token):
        return error_response(
            request,
            UNAUTHENTICATED,
            "Missing or wrong token: send 'Authorization: Bearer <token>'.",
            401,
        )
    try:
        return await handler(request)
    except MlflowException as e:
        status = None if is_mlflow_path(request.path) else e.http_status()
        return error_response(request, e.error_code, e.message, status)
    except web.HTTPRequestEntityTooLarge as e:
        return error_response(request, BAD_REQUEST, f"Request body too large: {e.text}", 413)
    except web.HTTPException:
        raise
    except Exception as e:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(request, INTERNAL_ERROR, f"{type(e).__name__}: {e}", 500)
