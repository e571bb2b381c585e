"""The JSON endpoints the web UI reads (part of the collector's documented API).

    GET /api/flightlog/ui/experiments
        every experiment with run count, last activity and tags
    GET /api/flightlog/ui/experiments/{experiment_id}
        the experiment
    GET /api/flightlog/ui/experiments/{experiment_id}/columns
        the param, metric and tag keys its runs use (the table's column picker)
    GET /api/flightlog/ui/experiments/{experiment_id}/runs
        ?filter=F &order_by=O (repeatable) &view=active|deleted|all
        &max_results=N (default 1000, 1 to 50000 as in MLflow's search; a 400
        beyond) &page_token=T
        one page of runs in the search filter language; a bad filter is a 400 whose
        message shows the position with a caret
    GET /api/flightlog/ui/experiments/{experiment_id}/metric-extremes?key=K
        per run that logged K: [min, max] of its values (the table's min/max cells)
    GET /api/flightlog/ui/experiments/{experiment_id}/metric-at-step?key=K&step=S
        per run that logged K at or before step S: [step, value] of its point with the
        largest such step (the latest logged there), so a metric logged every 100 steps
        still has a value at step 250 (the table's "at step" cells)
    GET /api/flightlog/ui/runs/{run_id}
        the run, its experiment, its parent and children, and its metric keys with their
        point counts and step ranges
    GET /api/flightlog/ui/metrics
        ?run=ID (repeatable) &key=K (repeatable) &points=N (default 2000)
        &min_step=A &max_step=B (a zoom range) | &after_step=S (live: only newer points;
        repeated once per run=, "" for none, each run's own last step)
    POST /api/flightlog/ui/metrics
        the same as a JSON object {"run": [...], "key": [...], "points": N, ...}, for
        more run ids than fit in a URL (1,000 runs on one chart: one request)
        each series as {run_id, key, steps, values, timestamps, sampled}: the raw points
        when they fit in N, else each of N/3 equal step buckets' min, max and last point
        (the page asks for 4 points per pixel column, so a spike is never dropped).
        Repeated runs and keys count once; at most MAX_SERIES series and
        MAX_REQUEST_POINTS series x points per request (a 400 names the limit). Values
        are numbers, NaN null, infinities "Infinity"/"-Infinity" (collector.ui_json).
    GET /api/flightlog/ui/run-states?run=ID (repeatable)
    POST /api/flightlog/ui/run-states
        the same as a JSON object {"run": [...]}
        live polling of many runs in one call: each run's {run_id, status, start_time,
        end_time, lifecycle_stage, last_step} (last_step: the largest step of its
        latest metrics, null before any) in the order asked, and the ids not found as
        "missing". Repeated ids count once; at most MAX_STATE_RUNS per call (a 400
        names the limit).
    GET /api/flightlog/ui/runs/{run_id}/artifacts?path=DIR
        the direct children of an artifact directory
    GET /api/flightlog/ui/runs/{run_id}/artifact?path=P[&download=1]
        a preview (text types as text/plain, raster images as themselves, the first
        2 MiB of text) or, with download=1, the file as an attachment; HTML, SVG and
        other types are only ever sent as attachments, so nothing a run logged runs as
        code in the UI's origin

Each answers JSON (errors as ``{"error_code", "message"}``) and obeys the token.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from flightlog.collector.artifact_api import run_repository
from flightlog.collector.downsample import RangePlan, bucket_many, plan_many
from flightlog.collector.request_args import json_args, string_list_arg
from flightlog.collector.search import ACTIVE_ONLY, ALL, DELETED_ONLY, MAX_RESULTS_LIMIT
from flightlog.collector.series_cache import cache_for
from flightlog.collector.state import COLLECTOR
from flightlog.collector.ui_json import json_float, json_floats, json_runs
from flightlog.core.artifact_paths import safe_relative_path
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from flightlog.core.validation import validate_run_id

PREFIX = "/api/flightlog/ui"
#: The most (run, key) series one metrics call returns.
MAX_SERIES = 2000
#: The most points per series a call may ask for.
MAX_POINTS = 50_000
#: The most series x points one metrics call may ask for: the answer's size, and with
#: downsample.READ_BATCH_POINTS the memory a call holds, stay bounded (the page asks for
#: at most ~40 points per pixel column of a chart, about 150,000 for 1,000 runs).
MAX_REQUEST_POINTS = 1_000_000
#: The most runs one run-states call reports on (the compare page's 1,000 runs).
MAX_STATE_RUNS = 1000
#: Text previews are cut here; the page offers the download for the rest.
TEXT_PREVIEW_BYTES = 2 << 20
IMAGE_PREVIEW_BYTES = 32 << 20
_VIEWS = {"active": ACTIVE_ONLY, "deleted": DELETED_ONLY, "all": ALL}
_TEXT = {
    ".txt", ".log", ".json", ".yaml", ".yml", ".csv", ".tsv", ".md", ".py", ".cfg",
    ".ini", ".toml", ".out", ".err", ".sh", ".jsonl", ".mlmodel", ".mlproject",
}  # fmt: skip
_IMAGES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
}
# Text-like names without an extension MLflow writes (MLmodel, MLproject, requirements).
_TEXT_NAMES = {"MLmodel", "MLproject", "conda.yaml", "requirements.txt"}


def _json(payload: Any) -> web.Response:
    # Metric values pass through collector.ui_json first: orjson would write infinities
    # as null.
    return _json_bytes(orjson.dumps(payload))


def _json_bytes(body: bytes) -> web.Response:
    return web.Response(
        body=body,
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _int_query(request: web.Request, name: str, default: int | None = None) -> int | None:
    return _int_arg(request.query, name, default)


def _int_arg(args: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    """An integer argument from a query string or a JSON body; absent or "" is default."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw)
        except ValueError:
            pass
    raise MlflowException(
        f"Parameter {name!r} must be an integer, got {raw!r}", INVALID_PARAMETER_VALUE
    )


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _step_arg(args: Mapping[str, Any], name: str) -> int | None:
    """A step argument: an integer in int64's range (steps are stored as int64), or None."""
    raw = args.get(name)
    # A JSON number past int64 arrives as a float (orjson): out of range, not "not integer".
    if isinstance(raw, float) and raw.is_integer() and not INT64_MIN <= raw <= INT64_MAX:
        step: int | None = int(raw)
    else:
        step = _int_arg(args, name)
    if step is not None and not INT64_MIN <= step <= INT64_MAX:
        raise MlflowException(
            f"Parameter {name!r} must be a 64-bit integer (between {INT64_MIN} and "
            f"{INT64_MAX}), got {step}",
            INVALID_PARAMETER_VALUE,
        )
    return step


async def experiments(request: web.Request) -> web.Response:
    """Every experiment with its run count and last activity."""
    c = request.app[COLLECTOR]
    return _json({"experiments": await c.read(c.store.experiment_summaries)})


async def experiment(request: web.Request) -> web.Response:
    """One experiment."""
    c = request.app[COLLECTOR]
    exp = await c.read(c.store.get_experiment, request.match_info["experiment_id"])
    return _json({"experiment": exp})


async def experiment_columns(request: web.Request) -> web.Response:
    """The keys an experiment's runs use."""
    c = request.app[COLLECTOR]
    eid = request.match_info["experiment_id"]
    await c.read(c.store.get_experiment, eid)  # a 404 for an unknown experiment
    return _json({"columns": await c.read(c.store.experiment_columns, eid)})


async def experiment_runs(request: web.Request) -> web.Response:
    """One page of an experiment's runs, filtered and ordered."""
    c = request.app[COLLECTOR]
    eid = request.match_info["experiment_id"]
    view = request.query.get("view", "active")
    if view not in _VIEWS:
        raise MlflowException(
            f"view must be one of {', '.join(_VIEWS)}, got {view!r}", INVALID_PARAMETER_VALUE
        )
    max_results = _int_query(request, "max_results", 1000)
    assert max_results is not None
    if not 1 <= max_results <= MAX_RESULTS_LIMIT:
        # MLflow's search allows 1 to 50,000 per page; a larger page would hold that many
        # runs' params, tags and metrics in memory at once.
        raise MlflowException(
            f"max_results must be between 1 and {MAX_RESULTS_LIMIT}, got {max_results}; "
            "page with next_page_token for more",
            INVALID_PARAMETER_VALUE,
        )

    def work() -> list[dict[str, Any]]:
        runs = c.store.get_runs(ids)
        json_runs(runs)
        return runs

    ids, token = await c.read(
        c.store.search_run_ids,
        [eid],
        request.query.get("filter") or None,
        _VIEWS[view],
        max_results,
        request.query.getall("order_by", []) or None,
        request.query.get("page_token") or None,
    )
    return _json({"runs": await c.read(work), "next_page_token": token})


async def _experiment_metric(request: web.Request) -> tuple[str, str]:
    """(experiment id, metric key) of a per-run metric read; a 404 for an unknown
    experiment, a 400 without a key."""
    c = request.app[COLLECTOR]
    eid = request.match_info["experiment_id"]
    key = request.query.get("key")
    if not key:
        raise MlflowException("Give the metric as key=K", INVALID_PARAMETER_VALUE)
    await c.read(c.store.get_experiment, eid)
    return eid, key


async def metric_extremes(request: web.Request) -> web.Response:
    """Each run's smallest and largest value of one metric."""
    c = request.app[COLLECTOR]
    eid, key = await _experiment_metric(request)
    found = await c.read(c.store.metric_extremes, eid, key)
    return _json({"key": key, "extremes": {r: json_floats(v) for r, v in found.items()}})


async def metric_at_step(request: web.Request) -> web.Response:
    """Each run's value of one metric at a step (its point with the largest step at or
    before it, and that step)."""
    c = request.app[COLLECTOR]
    eid, key = await _experiment_metric(request)
    step = _int_query(request, "step")
    if step is None or not -(2**63) <= step < 2**63:
        raise MlflowException("Give the step as step=S, a 64-bit integer", INVALID_PARAMETER_VALUE)
    found = await c.read(c.store.metric_values_at_step, eid, key, step)
    values = {r: [at, json_float(v)] for r, (at, v) in found.items()}
    return _json({"key": key, "step": step, "values": values})


async def run(request: web.Request) -> web.Response:
    """A run with its experiment, parent, children and metric keys."""
    c = request.app[COLLECTOR]
    run_id = validate_run_id(request.match_info["run_id"])

    def work() -> dict[str, Any]:
        store = c.store
        found = store.get_run(run_id)
        parent_id = found["data"]["tags"].get("mlflow.parentRunId")
        parents = store.get_runs([parent_id]) if parent_id else []
        children = store.get_runs(store.child_run_ids(run_id))
        json_runs([found, *parents, *children])
        return {
            "run": found,
            "experiment": store.get_experiment(found["info"]["experiment_id"]),
            "parent": parents[0] if parents else None,
            "children": children,
            "metrics": store.metric_series_info(run_id),
        }

    return _json(await c.read(work))


async def run_states(request: web.Request) -> web.Response:
    """Status, times and last step of many runs at once (live pages poll this)."""
    c = request.app[COLLECTOR]
    args = await json_args(request, lists=("run",))
    run_ids = list(dict.fromkeys(validate_run_id(r) for r in string_list_arg(args, "run")))
    if not run_ids:
        raise MlflowException("Give at least one run=ID", INVALID_PARAMETER_VALUE)
    if len(run_ids) > MAX_STATE_RUNS:
        raise MlflowException(
            f"At most {MAX_STATE_RUNS} runs per run-states call, got {len(run_ids)}",
            INVALID_PARAMETER_VALUE,
        )
    found = await c.read(c.store.run_states, run_ids)
    seen = {r["run_id"] for r in found}
    return _json({"runs": found, "missing": [r for r in run_ids if r not in seen]})


def _series_args(
    a: dict[str, Any],
) -> tuple[list[str], list[str], int, dict[str, int | None], int | None]:
    """(runs, keys, points, each run's first step, max_step) of a metrics call, checked:
    repeated runs and keys count once, and the call's size is capped (the module
    docstring)."""
    run_ids = list(dict.fromkeys(validate_run_id(r) for r in string_list_arg(a, "run")))
    keys = list(dict.fromkeys(string_list_arg(a, "key")))
    if not run_ids or not keys:
        raise MlflowException("Give at least one run=ID and one key=K", INVALID_PARAMETER_VALUE)
    series = len(run_ids) * len(keys)
    if series > MAX_SERIES:
        raise MlflowException(
            f"At most {MAX_SERIES} (run, key) series per call, got {len(run_ids)} runs x "
            f"{len(keys)} keys = {series}",
            INVALID_PARAMETER_VALUE,
        )
    points = _int_arg(a, "points", 2000)
    assert points is not None
    if not 3 <= points <= MAX_POINTS:
        raise MlflowException(
            f"points must be between 3 and {MAX_POINTS}, got {points}", INVALID_PARAMETER_VALUE
        )
    if series * points > MAX_REQUEST_POINTS:
        raise MlflowException(
            f"runs x keys x points = {len(run_ids)} x {len(keys)} x {points} = "
            f"{series * points:,} is over the limit of {MAX_REQUEST_POINTS:,} points per "
            "call; ask for fewer runs, keys or points",
            INVALID_PARAMETER_VALUE,
        )
    lo = _step_arg(a, "min_step")
    hi = _step_arg(a, "max_step")
    raw_after = a.get("after_step")
    if isinstance(raw_after, list) and len(raw_after) == 1:
        raw_after = raw_after[0]  # a GET's single after_step
    if isinstance(raw_after, list):
        # One after_step per run= (null or "" for a run with no points yet): a live
        # chart of runs at different steps asks for each one's new points in one call.
        asked = string_list_arg(a, "run")
        if len(raw_after) != len(asked):
            raise MlflowException(
                f"after_step has {len(raw_after)} values for {len(asked)} runs; give one "
                "per run= or a single one",
                INVALID_PARAMETER_VALUE,
            )
        after: dict[str, int | None] = {}
        for run_id, value in zip(asked, raw_after, strict=True):
            step = _step_arg({"after_step": value}, "after_step")
            before = after.get(run_id, step)
            # A run asked twice reads from the earlier of its steps.
            after[run_id] = None if step is None or before is None else min(step, before)
    else:
        one = _step_arg({"after_step": raw_after}, "after_step")
        after = dict.fromkeys(run_ids, one)
    # A run's first step is one past its after_step; past int64 (after_step = 2^63-1)
    # nothing can follow, and metrics() answers an empty series without a read.
    starts = {
        r: lo if s is None else (s + 1 if lo is None else max(lo, s + 1)) for r, s in after.items()
    }
    return run_ids, keys, points, starts, hi


async def metrics(request: web.Request) -> web.Response:
    """Chart-sized series for (run, key) pairs, over a step range or after a step."""
    c = request.app[COLLECTOR]
    run_ids, keys, points, starts, hi = _series_args(
        await json_args(request, lists=("run", "key", "after_step"))
    )
    # Runs that start at the same step share one plan query (usually all of them).
    by_start: dict[int | None, list[str]] = {}
    for run_id in run_ids:
        by_start.setdefault(starts[run_id], []).append(run_id)

    def work() -> bytes:
        # Series are encoded one by one as they are bucketed, so a call holds its answer's
        # bytes and one batch of chunks (downsample.READ_BATCH_POINTS), never every
        # series' points as Python objects at once. Answers seen before come from the
        # cache (collector.series_cache) without a read.
        cache = cache_for(c.store)
        plans = [
            p
            for lo, runs in by_start.items()
            for p in (
                plan_many(c.store, runs, keys, points, lo, hi)
                if lo is None or lo <= INT64_MAX
                else [(r, k, RangePlan([], points, INT64_MAX, hi)) for r in runs for k in keys]
            )
        ]
        parts: list[bytes] = []
        todo = []
        for run_id, key, plan in plans:
            found = cache.get((run_id, key, plan.signature()))
            if found is None:
                todo.append((len(parts), run_id, key, plan))
            parts.append(found or b"")
        fresh = bucket_many(c.store, [(run_id, key, plan) for _, run_id, key, plan in todo])
        for (i, _, _, plan), (run_id, key, (steps, vals, ts), sampled) in zip(
            todo, fresh, strict=True
        ):
            parts[i] = orjson.dumps(
                {
                    "run_id": run_id,
                    "key": key,
                    "steps": steps.tolist(),
                    "values": json_floats(vals),
                    "timestamps": ts.tolist(),
                    "sampled": sampled,
                }
            )
            cache.put((run_id, key, plan.signature()), parts[i])
        return b'{"series":[' + b",".join(parts) + b"]}"

    return _json_bytes(await c.read(work))


async def artifact_list(request: web.Request) -> web.Response:
    """The direct children of a run's artifact directory."""
    c = request.app[COLLECTOR]
    rel = safe_relative_path(request.query.get("path", ""), allow_root=True)
    repo = await run_repository(c, request.match_info["run_id"])
    files = await repo.list(rel or None)
    return _json(
        {"files": [{"path": f.path, "is_dir": f.is_dir, "file_size": f.file_size} for f in files]}
    )


def preview_type(path: str) -> str | None:
    """The content type a file is previewed as, or None when it is download-only."""
    name = posixpath.basename(path)
    ext = posixpath.splitext(name)[1].lower()
    if ext in _IMAGES:
        return _IMAGES[ext]
    if ext in _TEXT or name in _TEXT_NAMES:
        return "text/plain; charset=utf-8"
    return None


def content_disposition(path: str) -> str:
    """An attachment header naming the file (RFC 6266, with an ASCII fallback)."""
    name = posixpath.basename(path)
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def artifact(request: web.Request) -> web.StreamResponse:
    """A file of a run's artifacts: a safe preview, or a download."""
    c = request.app[COLLECTOR]
    rel = safe_relative_path(request.query.get("path", ""))
    repo = await run_repository(c, request.match_info["run_id"])
    download = request.query.get("download") in ("1", "true")
    kind = None if download else preview_type(rel)
    if not download and kind is None:
        raise MlflowException(
            f"No preview for {rel!r} (HTML, SVG and binary files are download-only)",
            INVALID_PARAMETER_VALUE,
        )
    reader = await repo.open_read(rel)
    limit = reader.size
    headers = {
        "X-Content-Type-Options": "nosniff",
        # Even if a browser were tricked into rendering this response as a document, it
        # would run in a sandbox with no script and no access to the UI's origin.
        "Content-Security-Policy": "default-src 'none'; img-src 'self'; sandbox",
        "Cache-Control": "no-store",
        "X-Flightlog-File-Size": str(reader.size),
    }
    if kind is None:
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Disposition"] = content_disposition(rel)
    else:
        headers["Content-Type"] = kind
        cap = TEXT_PREVIEW_BYTES if kind.startswith("text/") else IMAGE_PREVIEW_BYTES
        if reader.size > cap and not kind.startswith("text/"):
            raise MlflowException(
                f"{rel!r} is {reader.size} bytes, too large to preview; download it",
                INVALID_PARAMETER_VALUE,
            )
        limit = min(reader.size, cap)
        headers["X-Flightlog-Truncated"] = "1" if limit < reader.size else "0"
    headers["Content-Length"] = str(limit)
    response = web.StreamResponse(headers=headers)
    sent = 0
    async with reader:
        await response.prepare(request)
        async for chunk in reader:
            if sent + len(chunk) > limit:
                chunk = chunk[: limit - sent]
            await response.write(chunk)
            sent += len(chunk)
            if sent >= limit:
                break
    await response.write_eof()
    return response


def routes() -> list[web.RouteDef]:
    """The UI's JSON endpoints."""
    return [
        web.get(f"{PREFIX}/experiments", experiments),
        web.get(f"{PREFIX}/experiments/{{experiment_id}}", experiment),
        web.get(f"{PREFIX}/experiments/{{experiment_id}}/columns", experiment_columns),
        web.get(f"{PREFIX}/experiments/{{experiment_id}}/runs", experiment_runs),
        web.get(f"{PREFIX}/experiments/{{experiment_id}}/metric-extremes", metric_extremes),
        web.get(f"{PREFIX}/experiments/{{experiment_id}}/metric-at-step", metric_at_step),
        web.get(f"{PREFIX}/runs/{{run_id}}", run),
        web.get(f"{PREFIX}/runs/{{run_id}}/artifacts", artifact_list),
        web.get(f"{PREFIX}/runs/{{run_id}}/artifact", artifact),
        web.get(f"{PREFIX}/run-states", run_states),
        web.post(f"{PREFIX}/run-states", run_states),
        web.get(f"{PREFIX}/metrics", metrics),
        web.post(f"{PREFIX}/metrics", metrics),
    ]
