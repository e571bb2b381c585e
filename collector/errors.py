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

from flightlog.collector.bodies import BodyTimeout, body_abandoned, release_body
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
    BodyTooLarge,
    MlflowException,
    Overloaded,
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


def authorized(request: web.Request, token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>``.

    The scheme is matched without regard to case (RFC 9110 11.1: ``bearer`` is the same
    scheme); the token itself is compared exactly, in constant time.
    """
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # surrogateescape: a header that is not UTF-8 is a wrong token, not a crash.
    return hmac.compare_digest(given.strip(" ").encode("utf-8", "surrogateescape"), token.encode())


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the token, run the handler, and answer every failure with an error body."""
    collector = request.app[COLLECTOR]
    collector.last_activity = time.monotonic()
    token = collector.config.token
    # /health and the web UI's page and code (which hold no data) answer without it.
    public = request.path == "/health" or is_public_path(request.path)
    if token and not public and not authorized(request, token):
        return error_response(
            request,
            UNAUTHENTICATED,
            "Missing or wrong token: send 'Authorization: Bearer <token>'.",
            401,
        )
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise  # redirects
        # aiohttp's own answers (no route, wrong method, too large) in the same JSON shape.
        code = ENDPOINT_NOT_FOUND if e.status == 404 else BAD_REQUEST
        response = error_response(
            request, code, f"{e.reason}: {request.method} {request.path}"[:500], e.status
        )
    except ConnectionResetError:
        # The client went away mid-body (an aborted upload): nothing to answer and no
        # fault of ours, so one line rather than a traceback per abort. Whatever was
        # being uploaded was not committed (uploads commit only a complete body).
        log.info("client closed the connection during %s %s", request.method, request.path)
        response = error_response(request, BAD_REQUEST, "Client closed the connection", 400)
        response.force_close()
    except Exception as e:
        response = _answer(request, e)
    finally:
        release_body(request)
    if body_abandoned(request):
        # The rest of the body was not read: answer, then close (no keep-alive).
        response.force_close()
    return response


def _answer(request: web.Request, e: Exception) -> web.Response:
    if isinstance(e, Overloaded):
        response = error_response(request, "TEMPORARILY_UNAVAILABLE", str(e), 503)
        response.headers["Retry-After"] = str(e.retry_after)
        return response
    if isinstance(e, MlflowException):
        # A body too large or too slow is about the transport: 413/408 on every path.
        own = not is_mlflow_path(request.path) or isinstance(e, (BodyTimeout, BodyTooLarge))
        status = e.http_status() if own else None
        return error_response(request, e.error_code, e.message, status)
    log.exception("unhandled error in %s %s", request.method, request.path, exc_info=e)
    return error_response(request, INTERNAL_ERROR, f"{type(e).__name__}: {e}", 500)
