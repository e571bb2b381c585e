"""The native RPC the flightlog SDK reads through: ``POST /api/flightlog/rpc/<method>``.

The body is a msgpack map of arguments (parsed by :mod:`flightlog.collector.request_args`,
like the REST API's), the answer the method's result in msgpack. :data:`METHODS` is the
whole table, this module's methods and the search and chart reads of
:mod:`flightlog.collector.search_api`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from flightlog.collector import search_api
from flightlog.collector.experiment_checks import new_experiment
from flightlog.collector.request_args import Args, id_arg, msgpack_args, string_arg
from flightlog.collector.state import COLLECTOR, MSGPACK, Collector
from flightlog.core.exceptions import BAD_REQUEST, MlflowException
from flightlog.core.validation import experiment_tag_value, validate_experiment_name, validate_key
from flightlog.core.wire import pack

RpcMethod = Callable[[Collector, Args], Awaitable[Any]]


def _experiment_id(a: Args) -> str:
    return str(id_arg(a, "experiment_id", required=True))


def _required(a: Args, name: str) -> str:
    return str(string_arg(a, name, required=True))


async def create_experiment(c: Collector, a: Args) -> Any:
    """``{name, artifact_location?, tags?}`` -> ``{experiment_id}``."""
    name, location, tags = new_experiment(
        c.config, _required(a, "name"), string_arg(a, "artifact_location") or None, a.get("tags")
    )
    eid = await c.write(c.store.create_experiment, name, location, tags)
    return {"experiment_id": eid}


async def get_experiment(c: Collector, a: Args) -> Any:
    """``{experiment_id}`` -> the experiment."""
    return await c.read(c.store.get_experiment, _experiment_id(a))


async def get_experiment_by_name(c: Collector, a: Args) -> Any:
    """``{name}`` -> the experiment or None."""
    return await c.read(c.store.get_experiment_by_name, _required(a, "name"))


async def delete_experiment(c: Collector, a: Args) -> Any:
    """``{experiment_id}``."""
    await c.write(c.store.delete_experiment, _experiment_id(a))


async def restore_experiment(c: Collector, a: Args) -> Any:
    """``{experiment_id}``."""
    await c.write(c.store.restore_experiment, _experiment_id(a))


async def rename_experiment(c: Collector, a: Args) -> Any:
    """``{experiment_id, new_name}``."""
    new_name = validate_experiment_name(_required(a, "new_name"))
    await c.write(c.store.rename_experiment, _experiment_id(a), new_name)


async def set_experiment_tag(c: Collector, a: Args) -> Any:
    """``{experiment_id, key, value}``."""
    key = validate_key("tag", _required(a, "key"))
    value = experiment_tag_value(key, string_arg(a, "value", default=""))
    await c.write(c.store.set_experiment_tag, _experiment_id(a), key, value)


async def delete_experiment_tag(c: Collector, a: Args) -> Any:
    """``{experiment_id, key}``."""
    await c.write(c.store.delete_experiment_tag, _experiment_id(a), _required(a, "key"))


async def get_run(c: Collector, a: Args) -> Any:
    """``{run_id}`` -> the run."""
    return await c.read(c.store.get_run, _required(a, "run_id"))


async def delete_run(c: Collector, a: Args) -> Any:
    """``{run_id}``."""
    await c.write(c.store.delete_run, _required(a, "run_id"))


async def restore_run(c: Collector, a: Args) -> Any:
    """``{run_id}``."""
    await c.write(c.store.restore_run, _required(a, "run_id"))


async def get_metric_history(c: Collector, a: Args) -> Any:
    """``{run_id, key}`` -> ``{chunks}``: the series' packed column chunks."""
    chunks = await c.read(c.store.metric_chunks, _required(a, "run_id"), _required(a, "key"))
    return {"chunks": chunks}


METHODS: dict[str, RpcMethod] = {
    "create_experiment": create_experiment,
    "get_experiment": get_experiment,
    "get_experiment_by_name": get_experiment_by_name,
    "delete_experiment": delete_experiment,
    "restore_experiment": restore_experiment,
    "rename_experiment": rename_experiment,
    "set_experiment_tag": set_experiment_tag,
    "delete_experiment_tag": delete_experiment_tag,
    "get_run": get_run,
    "delete_run": delete_run,
    "restore_run": restore_run,
    "get_metric_history": get_metric_history,
    **search_api.METHODS,
}


async def rpc_handler(request: web.Request) -> web.Response:
    """Dispatch /api/flightlog/rpc/<method> with a msgpack map of arguments."""
    name = request.match_info["method"]
    method = METHODS.get(name)
    if method is None:
        raise MlflowException(f"Unknown method {name!r}", BAD_REQUEST)
    result = await method(request.app[COLLECTOR], await msgpack_args(request))
    return web.Response(body=pack(result), content_type=MSGPACK)


def routes() -> list[web.RouteDef]:
    """The RPC route."""
    return [web.post("/api/flightlog/rpc/{method}", rpc_handler)]
