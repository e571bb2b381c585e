"""The collector application in-process: ``aiohttp_client(create_app(config, store))``.

Fast tests of the assembled app (routes, the one error middleware and its two error
shapes, the shared argument parser, the token) beside the real-process tests
(test_reliability.py, test_rest_api.py), which keep covering the process itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from flightlog.collector.app import create_app
from flightlog.collector.config import CollectorConfig
from flightlog.collector.store import SqliteStore
from flightlog.core.exceptions import INVALID_STATE, MlflowException
from flightlog.core.uris import store_id
from flightlog.core.wire import encode_batch, pack, unpack

pytestmark = pytest.mark.asyncio
MSGPACK = "application/msgpack"
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


def _app(tmp_path: Path, **config: Any) -> web.Application:
    store = SqliteStore(tmp_path / "flightlog.db", (tmp_path / "artifacts").as_uri())
    cfg = CollectorConfig(
        store_uri=str(tmp_path), artifact_root=store.artifact_root, run_timeout=0, **config
    )
    return create_app(cfg, store)


async def _rpc(client: Client, method: str, args: dict[str, Any]) -> tuple[int, Any]:
    r = await client.post(
        f"/api/flightlog/rpc/{method}", data=pack(args), headers={"Content-Type": MSGPACK}
    )
    return r.status, unpack(await r.read())


async def test_health_ingest_and_rpc_read(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(_app(tmp_path))
    r = await client.get("/health")
    assert r.status == 200 and (await r.json())["store_id"] == store_id(
        str(tmp_path / "flightlog.db")
    )
    run_id = uuid.uuid4().hex
    body = encode_batch(
        "b1",
        "agent",
        [["create_run", {"run_id": run_id, "experiment_id": "0"}]],
        [[run_id] * 3, ["loss"] * 3, [0.5, 0.25, 0.125], [0, 1, 2], [1e9, 1e9 + 1, 1e9 + 2]],
    )
    r = await client.post("/api/flightlog/ingest", data=body, headers={"Content-Type": MSGPACK})
    assert r.status == 200
    assert unpack(await r.read()) == {"ok": True, "duplicate": False, "errors": []}
    status, run = await _rpc(client, "get_run", {"run_id": run_id})
    assert status == 200 and run["data"]["metrics"] == {"loss": 0.125}
    # The same run through MLflow's REST API, from the same store.
    r = await client.get("/api/2.0/mlflow/runs/get", params={"run_id": run_id})
    assert r.status == 200
    assert (await r.json())["run"]["data"]["metrics"][0]["value"] == 0.125


async def test_errors_take_the_shape_of_the_path(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    client = await aiohttp_client(_app(tmp_path))
    eid = (await _rpc(client, "create_experiment", {"name": "e"}))[1]["experiment_id"]
    await _rpc(client, "delete_experiment", {"experiment_id": eid})
    # flightlog's own endpoint: msgpack for a msgpack client, flightlog's status table.
    status, body = await _rpc(client, "delete_experiment", {"experiment_id": eid})
    assert status == 400 and body["error_code"] == "INVALID_STATE"
    # MLflow's API: JSON; a deleted experiment is not found for delete, as in MLflow.
    for prefix in ("/api", "/ajax-api"):
        r = await client.post(
            f"{prefix}/2.0/mlflow/experiments/delete", json={"experiment_id": eid}
        )
        assert r.status == 404 and r.content_type == "application/json"
        assert (await r.json())["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    # An endpoint flightlog does not have: MLflow's 404 body.
    r = await client.get("/api/2.0/mlflow/no/such/thing")
    assert r.status == 404 and (await r.json())["error_code"] == "ENDPOINT_NOT_FOUND"
    # A body that is not JSON under MLflow's API; not msgpack under flightlog's.
    r = await client.post("/api/2.0/mlflow/runs/create", data=b"{nope")
    assert r.status == 400 and (await r.json())["error_code"] == "BAD_REQUEST"
    r = await client.post("/api/flightlog/rpc/get_run", data=b"\xc1")
    assert r.status == 400 and orjson.loads(await r.read())["error_code"] == "BAD_REQUEST"
    status, body = await _rpc(client, "no_such_method", {})
    assert status == 400 and "no_such_method" in body["message"]


async def test_one_code_two_statuses(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    """MLflow answers INVALID_STATE with 500, flightlog's own endpoints with 400."""

    async def invalid_state(request: web.Request) -> web.Response:
        raise MlflowException("not now", INVALID_STATE)

    app = _app(tmp_path)
    app.router.add_get("/api/2.0/mlflow/test/state", invalid_state)
    app.router.add_get("/api/flightlog/test/state", invalid_state)
    client = await aiohttp_client(app)
    r = await client.get("/api/2.0/mlflow/test/state")
    assert r.status == 500 and await r.json() == {
        "error_code": INVALID_STATE,
        "message": "not now",
        # MLflow 3's classification of the code, as its server sends it.
        "sqlstate": "XXM00",
        "error_class": "CLIENT_INTERNAL_ERROR",
    }
    r = await client.get("/api/flightlog/test/state", headers={"Accept": MSGPACK})
    assert r.status == 400 and unpack(await r.read())["error_code"] == INVALID_STATE


async def test_one_argument_parser_for_rpc_and_rest(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    client = await aiohttp_client(_app(tmp_path))
    status, body = await _rpc(client, "get_run", {})
    r = await client.get("/api/2.0/mlflow/runs/get")
    rest = await r.json()
    assert status == r.status == 400
    assert body["message"].startswith("Missing value for required parameter 'run_id'")
    assert rest["message"].startswith("Missing value for required parameter 'run_id'")
    status, body = await _rpc(client, "get_experiment", {"experiment_id": [1]})
    assert status == 400 and body["message"].startswith("Invalid value [1] for parameter")
    # Ids may come as numbers in both.
    status, exp = await _rpc(client, "get_experiment", {"experiment_id": 0})
    assert status == 200 and exp["name"] == "Default"
    status, body = await _rpc(client, "search_runs", {"experiment_ids": ["0"], "max_results": "x"})
    assert status == 400 and "max_results" in body["message"]


async def test_token_is_required_but_for_health(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(_app(tmp_path, token="s3cret"))
    assert (await client.get("/health")).status == 200
    r = await client.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": "0"})
    assert r.status == 401 and (await r.json())["error_code"] == "UNAUTHENTICATED"
    status, _ = await _rpc(client, "get_experiment", {"experiment_id": "0"})
    assert status == 401
    r = await client.get(
        "/api/2.0/mlflow/experiments/get",
        params={"experiment_id": "0"},
        headers={"Authorization": "Bearer s3cret"},
    )
    assert r.status == 200
    # The scheme is case-insensitive (RFC 9110); the token is not.
    for header, status in [
        ("bearer s3cret", 200),
        ("BEARER  s3cret", 200),
        ("Bearer S3CRET", 401),
        ("Basic s3cret", 401),
        ("Bearers3cret", 401),
        ("s3cret", 401),
    ]:
        r = await client.get(
            "/api/2.0/mlflow/experiments/get",
            params={"experiment_id": "0"},
            headers={"Authorization": header},
        )
        assert r.status == status, header


async def test_health_shows_the_sqlite_file_only_with_the_token(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    db = str(tmp_path / "flightlog.db")
    client = await aiohttp_client(_app(tmp_path, token="s3cret", db_path=db))
    assert "db" not in await (await client.get("/health")).json()
    r = await client.get("/health", headers={"Authorization": "Bearer s3cret"})
    got = await r.json()
    assert got["db"] == db and got["store"] == str(tmp_path) and got["store_id"] == store_id(db)


async def test_artifacts_round_trip_through_both_apis(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    client = await aiohttp_client(_app(tmp_path))
    run_id = uuid.uuid4().hex
    body = encode_batch("b", "a", [["create_run", {"run_id": run_id, "experiment_id": "0"}]], [])
    await client.post("/api/flightlog/ingest", data=body, headers={"Content-Type": MSGPACK})
    r = await client.put(f"/api/flightlog/artifacts/{run_id}/d/a.txt", data=b"hello")
    assert r.status == 200 and unpack(await r.read())["file_size"] == 5
    proxy = f"/api/2.0/mlflow-artifacts/artifacts/0/{run_id}/artifacts"
    r = await client.get(f"{proxy}/d/a.txt")
    assert await r.read() == b"hello" and "attachment" in r.headers["Content-Disposition"]
    r = await client.put(f"{proxy}/b.bin", data=b"\x00" * 10)
    assert r.status == 200
    r = await client.get(f"/api/flightlog/artifacts/{run_id}/b.bin")
    assert await r.read() == b"\x00" * 10
    r = await client.get(f"{proxy}/../../x/artifacts/b.bin")
    assert r.status in (400, 404)
