"""SqliteStore: the tracking store on one SQLite file (WAL).

Metric points are kept as column chunks (``metric_chunks``): each ingest batch writes
one row per (run, key) holding packed arrays of steps, values and timestamps, so a
batch of 100,000 points is a handful of rows rather than 100,000 inserts. The latest
point of every series is kept in ``latest_metrics`` for get_run and search filters.

The store is synchronous; the collector calls it from worker threads. Writes go
through one connection (SQLite has one writer at a time anyway); every reading thread
opens its own connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from flightlog.collector import downsample
from flightlog.collector.downsample import block_summary
from flightlog.collector.filters import register_sql_functions
from flightlog.collector.search import search_experiment_ids, search_run_ids
from flightlog.collector.store_api import (
    DEFAULT_EXPERIMENT_ID,
    DEFAULT_EXPERIMENT_NAME,
    RUN_STATE_COLUMNS,
    Op,
    Points,
    Row,
    RunSeries,
    Series,
    run_state,
)
from flightlog.core import ops, settings
from flightlog.core.entities import RunStatus
from flightlog.core.exceptions import (
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    MlflowException,
)
from flightlog.core.validation import parse_experiment_id


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def _schema_sql(name: str) -> str:
    return resources.files("flightlog.collector").joinpath(name).read_text(encoding="utf-8")


def _missing(what: str) -> MlflowException:
    return MlflowException(what, RESOURCE_DOES_NOT_EXIST)


def latest_index(steps: Sequence[int], ts: Sequence[float]) -> int:
    """Index of a series' latest point: largest step, then largest timestamp, then last."""
    n = len(steps)
    top = max(steps)
    # Fast path: steps usually grow, so the last point is the latest.
    if steps[n - 1] == top and (n == 1 or steps[n - 2] != top):
        return n - 1
    best = -1
    for i in range(n):
        if steps[i] == top and (best < 0 or ts[i] >= ts[best]):
            best = i
    return best


class SqliteStore:
    """The tracking store on a SQLite file, with an artifact root for new experiments."""

    def __init__(self, db_path: str | os.PathLike[str], artifact_root: str) -> None:
        self.db_path = str(db_path)
        self.artifact_root = artifact_root.rstrip("/")
        Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        with self._write_lock:
            for script in ("schema.sql", "search_indexes.sql", "inputs_schema.sql"):
                self._writer.executescript(_schema_sql(script))
            self._ensure_default_experiment()

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """A new connection, set up for this store (the writer's and each reader's)."""
        conn = sqlite3.connect(
            self.db_path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        # 16 KiB pages: metric chunks are large blobs, and bigger pages shorten their
        # overflow chains (only takes effect on a new file, before WAL is switched on).
        conn.execute("PRAGMA page_size=16384")
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL by default: the collector acknowledges a batch after COMMIT and the agent
        # then deletes its copy, so the commit must survive a power loss, not only a crash
        # of the collector (NORMAL in WAL mode). FLIGHTLOG_SQLITE_SYNCHRONOUS is validated
        # by the setting's parser, so nothing else reaches the PRAGMA's text.
        conn.execute(f"PRAGMA synchronous={settings.SQLITE_SYNCHRONOUS.get()}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        conn.row_factory = sqlite3.Row
        # The SQL functions compiled search filters call (ILIKE's lowering).
        register_sql_functions(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside one write transaction: committed when the block
        ends, rolled back when it raises. Holds the write lock throughout."""
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close the writer connection (reader connections close with their threads)."""
        with self._write_lock:
            self._writer.close()

    # -- experiments -----------------------------------------------------------------

    def _ensure_default_experiment(self) -> None:
        row = self._writer.execute(
            "SELECT 1 FROM experiments WHERE experiment_id = ?", (DEFAULT_EXPERIMENT_ID,)
        ).fetchone()
        if row is None:
            t = now_ms()
            self._writer.execute(
                "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage,"
                " creation_time, last_update_time) VALUES (?, ?, ?, 'active', ?, ?)",
                (
                    DEFAULT_EXPERIMENT_ID,
                    DEFAULT_EXPERIMENT_NAME,
                    f"{self.artifact_root}/{DEFAULT_EXPERIMENT_ID}",
                    t,
                    t,
                ),
            )

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create an experiment; its name must be unused (deleted ones included, as MLflow)."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM experiments WHERE name = ?", (name,)).fetchone():
                raise MlflowException(
                    f"Experiment(name={name}) already exists.", RESOURCE_ALREADY_EXISTS
                )
            t = now_ms()
            cur = conn.execute(
                "INSERT INTO experiments (name, artifact_location, lifecycle_stage,"
                " creation_time, last_update_time) VALUES (?, '', 'active', ?, ?)",
                (name, t, t),
            )
            exp_id = int(cur.lastrowid or 0)
            location = (
                artifact_location.rstrip("/")
                if artifact_location
                else f"{self.artifact_root}/{exp_id}"
            )
            conn.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (location, exp_id),
            )
            for k, v in (tags or {}).items():
                conn.execute(
                    "INSERT OR REPLACE INTO experiment_tags VALUES (?, ?, ?)", (exp_id, k, v)
                )
        return str(exp_id)

    def _experiment_row(self, conn: sqlite3.Connection, where: str, arg: Any) -> Row | None:
        row = conn.execute(f"SELECT * FROM experiments WHERE {where}", (arg,)).fetchone()
        if row is None:
            return None
        exp = dict(row)
        exp["experiment_id"] = str(exp["experiment_id"])
        exp["tags"] = {
            r["key"]: r["value"]
            for r in conn.execute(
                "SELECT key, value FROM experiment_tags WHERE experiment_id = ?",
                (row["experiment_id"],),
            )
        }
        return exp

    def get_experiment(self, experiment_id: str) -> Row:
        """An experiment by id, deleted ones included (as MLflow)."""
        exp = self._experiment_row(self.reader(), "experiment_id = ?", _int_id(experiment_id))
        if exp is None:
            raise _missing(f"No Experiment with id={experiment_id} exists")
        return exp

    def get_experiment_by_name(self, name: str) -> Row | None:
        """An experiment by name, or None."""
        return self._experiment_row(self.reader(), "name = ?", name)

    def list_experiments(self, ids: Iterable[str]) -> list[Row]:
        """Experiments by id, in the order given; unknown ids are skipped."""
        conn = self.reader()
        out = []
        for i in ids:
            exp = self._experiment_row(conn, "experiment_id = ?", _int_id(i))
            if exp is not None:
                out.append(exp)
        return out

    def _set_experiment_stage(self, experiment_id: str, stage: str) -> None:
        eid = _int_id(experiment_id)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT lifecycle_stage FROM experiments WHERE experiment_id = ?", (eid,)
            ).fetchone()
            if row is None:
                raise _missing(f"No Experiment with id={experiment_id} exists")
            if stage == "deleted" and eid == DEFAULT_EXPERIMENT_ID:
                raise MlflowException(
                    "Cannot delete the default experiment '0'.", INVALID_PARAMETER_VALUE
                )
            want_from = "active" if stage == "deleted" else "deleted"
            if row["lifecycle_stage"] != want_from:
                raise MlflowException(
                    f"Cannot {'delete' if stage == 'deleted' else 'restore'} experiment "
                    f"{experiment_id}: it is {row['lifecycle_stage']}.",
                    INVALID_STATE,
                )
            t = now_ms()
            conn.execute(
                "UPDATE experiments SET lifecycle_stage = ?, last_update_time = ? "
                "WHERE experiment_id = ?",
                (stage, t, eid),
            )
            # Runs follow their experiment, as in MLflow.
            conn.execute(
                "UPDATE runs SET lifecycle_stage = ?, deleted_time = ? WHERE experiment_id = ?",
                (stage, t if stage == "deleted" else None, eid),
            )

    def delete_experiment(self, experiment_id: str) -> None:
        """Mark an experiment and its runs deleted."""
        self._set_experiment_stage(experiment_id, "deleted")

    def restore_experiment(self, experiment_id: str) -> None:
        """Bring a deleted experiment and its runs back."""
        self._set_experiment_stage(experiment_id, "active")

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Rename an experiment (MLflow's update_experiment)."""
        eid = _int_id(experiment_id)
        with self._transaction() as conn:
            if conn.execute(
                "SELECT 1 FROM experiments WHERE name = ? AND experiment_id != ?", (new_name, eid)
            ).fetchone():
                raise MlflowException(
                    f"Experiment(name={new_name}) already exists.", RESOURCE_ALREADY_EXISTS
                )
            cur = conn.execute(
                "UPDATE experiments SET name = ?, last_update_time = ? WHERE experiment_id = ?",
                (new_name, now_ms(), eid),
            )
            if cur.rowcount == 0:
                raise _missing(f"No Experiment with id={experiment_id} exists")

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Set (upsert) an experiment tag."""
        eid = _int_id(experiment_id)
        with self._transaction() as conn:
            if not conn.execute(
                "SELECT 1 FROM experiments WHERE experiment_id = ?", (eid,)
            ).fetchone():
                raise _missing(f"No Experiment with id={experiment_id} exists")
            conn.execute(
                "INSERT OR REPLACE INTO experiment_tags VALUES (?, ?, ?)", (eid, key, value)
            )

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Delete an experiment tag; a missing tag is an error, as in MLflow."""
        with self._transaction() as conn:
            cur = conn.execute(
                "DELETE FROM experiment_tags WHERE experiment_id = ? AND key = ?",
                (_int_id(experiment_id), key),
            )
            if cur.rowcount == 0:
                raise _missing(f"No tag with name: {key} in experiment {experiment_id}")

    # -- writes from ingest --------------------------------------------------------------

    def apply_batch(
        self,
        batch_id: str | None,
        ops: Sequence[Op],
        series: Sequence[Series],
    ) -> tuple[bool, list[dict[str, str]]]:
        """Apply one ingest batch in one transaction.

        ``ops`` are (name, args) records applied in order; ``series`` are
        (run_id, key, steps, values, timestamps) column chunks. A batch id seen before
        is acknowledged without being applied again. Returns (duplicate, errors): an op
        that fails (a changed param, an unknown run) is skipped and reported, and the
        rest of the batch is stored.
        """
        errors: list[dict[str, str]] = []
        with self._transaction() as conn:
            if batch_id is not None:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO batches VALUES (?, ?)", (batch_id, now_ms())
                )
                if cur.rowcount == 0:
                    return True, []  # seen before: the (empty) transaction commits
            known_runs: dict[str, bool] = {}
            for name, args in ops:
                # A savepoint per op: a failing op leaves nothing half-applied.
                conn.execute("SAVEPOINT op")
                try:
                    self._apply_op(conn, name, args, known_runs)
                except MlflowException as e:
                    conn.execute("ROLLBACK TO op")
                    errors.append({"op": name, "error_code": e.error_code, "message": e.message})
                except _MALFORMED as e:
                    # Arguments of the wrong shape: that op's fault, not the store's.
                    conn.execute("ROLLBACK TO op")
                    errors.append(_malformed(name, e))
                conn.execute("RELEASE op")
            for run_id, key, steps, vals, ts in series:
                if not self._run_exists(conn, run_id, known_runs):
                    errors.append(
                        {
                            "op": "log_metric",
                            "error_code": RESOURCE_DOES_NOT_EXIST,
                            "message": f"Run '{run_id}' not found; "
                            f"{len(steps)} points of {key!r} dropped",
                        }
                    )
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    self._insert_series(conn, run_id, key, steps, vals, ts)
                except _MALFORMED as e:
                    conn.execute("ROLLBACK TO op")
                    errors.append(_malformed("log_metric", e))
                conn.execute("RELEASE op")
        return False, errors

    def _run_exists(self, conn: sqlite3.Connection, run_id: str, cache: dict[str, bool]) -> bool:
        hit = cache.get(run_id)
        if hit is None:
            hit = (
                conn.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
                is not None
            )
            cache[run_id] = hit
        return hit

    def _insert_series(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        key: str,
        steps: array[int],
        vals: array[float],
        ts: array[float],
    ) -> None:
        n = len(steps)
        if n == 0:
            return
        conn.execute(
            "INSERT INTO metric_chunks (run_uuid, key, n, min_step, max_step, steps, vals, ts,"
            " summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                key,
                n,
                min(steps),
                max(steps),
                steps.tobytes(),
                vals.tobytes(),
                ts.tobytes(),
                block_summary(steps, vals, ts).tobytes(),
            ),
        )
        i = latest_index(steps, ts)
        self._upsert_latest(conn, run_id, key, vals[i], round(ts[i] * 1000), steps[i])

    def _upsert_latest(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        key: str,
        value: float,
        timestamp: int,
        step: int,
    ) -> None:
        is_nan = math.isnan(value)
        conn.execute(
            "INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step, is_nan)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run_uuid, key) DO UPDATE SET value = excluded.value,"
            " timestamp = excluded.timestamp, step = excluded.step, is_nan = excluded.is_nan"
            " WHERE excluded.step > latest_metrics.step OR (excluded.step = latest_metrics.step"
            " AND excluded.timestamp >= latest_metrics.timestamp)",
            (run_id, key, None if is_nan else value, timestamp, step, int(is_nan)),
        )

    def _apply_op(
        self, conn: sqlite3.Connection, name: str, a: dict[str, Any], known_runs: dict[str, bool]
    ) -> None:
        apply = _APPLY.get(name)
        if apply is None:
            raise MlflowException(f"Unknown operation {name!r}", INVALID_PARAMETER_VALUE)
        if name != ops.CREATE_RUN:
            run_id = a.get("run_id")
            if not isinstance(run_id, str) or not self._run_exists(conn, run_id, known_runs):
                raise _missing(f"Run '{run_id}' not found")
        apply(self, conn, a)
        if name == ops.CREATE_RUN:
            known_runs[a["run_id"]] = True

    def _log_params(self, conn: sqlite3.Connection, a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        for k, v in a["params"].items():
            cur = conn.execute("INSERT OR IGNORE INTO params VALUES (?, ?, ?)", (run_id, k, v))
            if cur.rowcount == 0:
                old = conn.execute(
                    "SELECT value FROM params WHERE run_uuid = ? AND key = ?", (run_id, k)
                ).fetchone()[0]
                if old != v:
                    raise MlflowException(
                        f"Changing param values is not allowed. Param with key={k!r} was "
                        f"already logged with value={old!r} for run ID={run_id!r}. "
                        f"Attempted logging new value {v!r}.",
                        INVALID_PARAMETER_VALUE,
                    )

    def _set_tags(self, conn: sqlite3.Connection, a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        for k, v in a["tags"].items():
            conn.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (run_id, k, v))
            if k == "mlflow.runName":
                conn.execute("UPDATE runs SET run_name = ? WHERE run_uuid = ?", (v, run_id))

    def _delete_tag(self, conn: sqlite3.Connection, a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        cur = conn.execute("DELETE FROM tags WHERE run_uuid = ? AND key = ?", (run_id, a["key"]))
        if cur.rowcount == 0:
            raise _missing(f"No tag with name: {a['key']} in run with id {run_id}")

    def _log_metric(self, conn: sqlite3.Connection, a: dict[str, Any]) -> None:
        # A single point from a client that does not send column chunks (REST API).
        steps, vals, ts = (
            array("q", [a["step"]]),
            array("d", [a["value"]]),
            array("d", [a["timestamp"] / 1000.0]),
        )
        self._insert_series(conn, a["run_id"], a["key"], steps, vals, ts)

    def _heartbeat(self, conn: sqlite3.Connection, a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        conn.execute("UPDATE runs SET last_heartbeat = ? WHERE run_uuid = ?", (now_ms(), run_id))
        # A run failed for want of heartbeats whose agent was only cut off (collector
        # overloaded, network down) is heard again: it is running after all.
        if _clear_timeout_reason(conn, run_id):
            conn.execute(
                "UPDATE runs SET status = 'RUNNING', end_time = NULL"
                " WHERE run_uuid = ? AND status = 'FAILED'",
                (run_id,),
            )

    def _create_run(self, conn: sqlite3.Connection, a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        if conn.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone():
            return  # a retried create is harmless
        eid = _int_id(a["experiment_id"])
        exp = conn.execute(
            "SELECT artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = ?",
            (eid,),
        ).fetchone()
        if exp is None:
            raise _missing(f"No Experiment with id={a['experiment_id']} exists")
        if exp["lifecycle_stage"] != "active":
            raise MlflowException(
                f"The experiment {a['experiment_id']} must be in the 'active' state.", INVALID_STATE
            )
        artifact_uri = f"{exp['artifact_location']}/{run_id}/artifacts"
        t = now_ms()
        conn.execute(
            "INSERT INTO runs (run_uuid, experiment_id, run_name, user_id, status, start_time,"
            " end_time, artifact_uri, lifecycle_stage, last_heartbeat)"
            " VALUES (?, ?, ?, ?, ?, ?, NULL, ?, 'active', ?)",
            (
                run_id,
                eid,
                a.get("run_name") or "",
                a.get("user_id") or "",
                a.get("status") or "RUNNING",
                int(a.get("start_time") or t),
                artifact_uri,
                # Only agents, which send heartbeats, ask to be watched (liveness.py).
                t if a.get("heartbeat") else None,
            ),
        )
        for k, v in (a.get("tags") or {}).items():
            conn.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (run_id, k, v))

    def _update_run(self, conn: sqlite3.Connection, a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        status = a.get("status")
        if status is not None:
            if status not in RunStatus.ALL:
                raise MlflowException(f"Invalid run status {status!r}", INVALID_PARAMETER_VALUE)
            end_time = a.get("end_time")
            if status in ("FINISHED", "FAILED", "KILLED") and end_time is None:
                end_time = now_ms()
            conn.execute(
                "UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                (status, end_time if status != "RUNNING" else None, run_id),
            )
            # The client's word on its run's status overrides the heartbeat watch's.
            _clear_timeout_reason(conn, run_id)
            if status == "RUNNING" and a.get("heartbeat"):
                conn.execute(
                    "UPDATE runs SET last_heartbeat = ? WHERE run_uuid = ?", (now_ms(), run_id)
                )
        if a.get("run_name"):
            conn.execute("UPDATE runs SET run_name = ? WHERE run_uuid = ?", (a["run_name"], run_id))
            conn.execute(
                "INSERT OR REPLACE INTO tags VALUES (?, 'mlflow.runName', ?)",
                (run_id, a["run_name"]),
            )

    # -- runs: reads and lifecycle ---------------------------------------------------------

    def get_run(self, run_id: str) -> Row:
        """A run with params, tags and latest metrics; deleted runs included, as in MLflow."""
        runs = self.get_runs([run_id])
        if not runs:
            raise _missing(f"Run '{run_id}' not found")
        return runs[0]

    def get_runs(self, run_ids: Sequence[str]) -> list[Row]:
        """Runs by id in the given order (unknown ids skipped), with params, tags, metrics."""
        conn = self.reader()
        if not run_ids:
            return []
        out: dict[str, Row] = {}
        for start in range(0, len(run_ids), 500):
            part = list(run_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            for r in conn.execute(f"SELECT * FROM runs WHERE run_uuid IN ({marks})", part):
                out[r["run_uuid"]] = {
                    "info": {
                        "run_id": r["run_uuid"],
                        "run_uuid": r["run_uuid"],
                        "experiment_id": str(r["experiment_id"]),
                        "run_name": r["run_name"],
                        "user_id": r["user_id"],
                        "status": r["status"],
                        "start_time": r["start_time"],
                        "end_time": r["end_time"],
                        "artifact_uri": r["artifact_uri"],
                        "lifecycle_stage": r["lifecycle_stage"],
                    },
                    "data": {"metrics": {}, "params": {}, "tags": {}},
                }
            for table, field in (("params", "params"), ("tags", "tags")):
                for r in conn.execute(
                    f"SELECT run_uuid, key, value FROM {table} WHERE run_uuid IN ({marks})", part
                ):
                    out[r[0]]["data"][field][r[1]] = r[2]
            for r in conn.execute(
                "SELECT run_uuid, key, value, is_nan FROM latest_metrics "
                f"WHERE run_uuid IN ({marks})",
                part,
            ):
                out[r[0]]["data"]["metrics"][r[1]] = math.nan if r[3] else r[2]
            for r in conn.execute(
                "SELECT run_uuid, dataset_json, tags_json FROM run_inputs "
                f"WHERE run_uuid IN ({marks}) ORDER BY input_id",
                part,
            ):
                inputs = out[r[0]].setdefault("inputs", {"dataset_inputs": []})
                inputs["dataset_inputs"].append(
                    {"dataset": json.loads(r[1]), "tags": json.loads(r[2])}
                )
        return [out[i] for i in run_ids if i in out]

    def run_states(self, run_ids: Sequence[str]) -> list[Row]:
        """Runs' status, times and last step (the UI's live polling; see StoreAPI)."""
        if not run_ids:
            return []
        # One query for the whole list: a JSON array parameter stands for the ids.
        ids = (orjson.dumps(list(run_ids)).decode(),)
        found = {
            r[0]: run_state(r)
            for r in self.reader().execute(
                f"SELECT {RUN_STATE_COLUMNS} FROM runs r"
                " WHERE r.run_uuid IN (SELECT value FROM json_each(?))",
                ids,
            )
        }
        return [found[i] for i in run_ids if i in found]

    def runs_json(
        self, run_ids: Sequence[str], artifact_uri: Callable[[str, str, str], str]
    ) -> list[str]:
        """Runs as MLflow JSON text (one object each), in the order of ``run_ids``.

        Unknown ids are skipped. One query per table for the whole page: a JSON array
        parameter stands for the id list, so 50,000 ids need neither 50,000 queries nor
        SQLite's bound-parameter limit. The text is assembled without a Python object per
        param, tag or metric: SQLite writes each run's params and tags as a JSON array
        (``json_group_array``; strings and integers are exact in its JSON), and the metrics
        as :func:`_metrics_json` says; ``artifact_uri(experiment_id, run_id, real_uri)``
        gives the artifact URI clients see. The fields are those MLflow's server sends (a
        metric's value comes last in its object, which JSON readers do not mind); empty
        ``inputs`` and ``outputs`` are left out (MLflow sends ``{}``; the client builds the
        same Run either way, and parses two messages less per run).
        """
        if not run_ids:
            return []
        # Plain tuples, not the store's sqlite3.Row: a page of runs is tens of thousands of rows.
        conn = self.reader().cursor()
        conn.row_factory = None
        ids = (orjson.dumps(list(run_ids)).decode(),)
        where = "run_uuid IN (SELECT value FROM json_each(?))"
        infos: dict[str, str] = {}
        dumps = orjson.dumps
        for r in conn.execute(
            "SELECT run_uuid, experiment_id, run_name, user_id, status, start_time, end_time,"
            f" artifact_uri, lifecycle_stage FROM runs WHERE {where}",
            ids,
        ):
            run_id, eid = r[0], str(r[1])
            info: dict[str, Any] = {
                "run_uuid": run_id,
                "experiment_id": eid,
                "run_name": r[2],
                "user_id": r[3],
                "status": r[4],
                "start_time": r[5],
            }
            if r[6] is not None:
                info["end_time"] = r[6]
            info["artifact_uri"] = artifact_uri(eid, run_id, r[7])
            info["lifecycle_stage"] = r[8]
            info["run_id"] = run_id
            infos[run_id] = dumps(info).decode()
        metrics = _metrics_json(conn, ids)
        arrays: list[dict[str, str]] = []
        for table in ("params", "tags"):
            arrays.append(
                dict(
                    conn.execute(
                        "SELECT run_uuid, json_group_array(json_object('key', key, 'value', value))"
                        f" FROM {table} WHERE {where} GROUP BY run_uuid",
                        ids,
                    ).fetchall()
                )
            )
        params, tags = arrays
        inputs: dict[str, list[dict[str, Any]]] = {}
        for r in conn.execute(
            "SELECT run_uuid, dataset_json, tags_json FROM run_inputs"
            f" WHERE {where} ORDER BY input_id",
            ids,
        ):
            entry: dict[str, Any] = {}
            input_tags = orjson.loads(r[2])
            if input_tags:
                entry["tags"] = input_tags
            entry["dataset"] = orjson.loads(r[1])
            inputs.setdefault(r[0], []).append(entry)
        out: list[str] = []
        for run_id in run_ids:
            info_text = infos.get(run_id)
            if info_text is None:
                continue
            data: list[str] = []
            if run_id in metrics:
                data.append('"metrics":' + metrics[run_id])
            if run_id in params:
                data.append('"params":' + params[run_id])
            if run_id in tags:
                data.append('"tags":' + tags[run_id])
            text = '{"info":' + info_text + ',"data":{' + ",".join(data) + "}"
            if run_id in inputs:
                text += ',"inputs":' + dumps({"dataset_inputs": inputs[run_id]}).decode()
            out.append(text + "}")
        return out

    def _set_run_stage(self, run_id: str, stage: str) -> None:
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE runs SET lifecycle_stage = ?, deleted_time = ? WHERE run_uuid = ?",
                (stage, now_ms() if stage == "deleted" else None, run_id),
            )
            if cur.rowcount == 0:
                raise _missing(f"Run '{run_id}' not found")

    def delete_run(self, run_id: str) -> None:
        """Mark a run deleted (it stays readable by id, as in MLflow)."""
        self._set_run_stage(run_id, "deleted")

    def restore_run(self, run_id: str) -> None:
        """Bring a deleted run back."""
        self._set_run_stage(run_id, "active")

    def run_exists(self, run_id: str) -> bool:
        """Whether a run with this id exists (whatever its stage)."""
        conn = self.reader()
        return (
            conn.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is not None
        )

    def run_artifact_location(self, run_id: str) -> tuple[str, str]:
        """(experiment id, artifact URI) of a run."""
        row = (
            self.reader()
            .execute("SELECT experiment_id, artifact_uri FROM runs WHERE run_uuid = ?", (run_id,))
            .fetchone()
        )
        if row is None:
            raise _missing(f"Run with id={run_id} not found")
        return str(row[0]), str(row[1])

    # -- synchronous writes for the REST API (collector/rest.py) ---------------------------

    def _require_active_run(self, conn: sqlite3.Connection, run_id: str) -> None:
        row = conn.execute(
            "SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise _missing(f"Run with id={run_id} not found")
        if row[0] != "active":
            raise MlflowException(
                f"The run {run_id} must be in the 'active' state. Current state is {row[0]}.",
                INVALID_PARAMETER_VALUE,
            )

    def write_run(
        self,
        run_id: str,
        ops: Sequence[Op],
        series: Sequence[RunSeries] = (),
    ) -> None:
        """Apply ops and (key, steps, values, timestamps) series to one active run, atomically.

        Unlike :meth:`apply_batch`, which stores what it can and reports the rest, the first
        failure raises and nothing is stored: a REST client gets one answer for its request.
        """
        with self._transaction() as conn:
            self._require_active_run(conn, run_id)
            known_runs = {run_id: True}
            for name, args in ops:
                self._apply_op(conn, name, {**args, "run_id": run_id}, known_runs)
            for key, steps, vals, ts in series:
                self._insert_series(conn, run_id, key, steps, vals, ts)

    def log_inputs(self, run_id: str, inputs: Sequence[tuple[str, str, str, str]]) -> None:
        """Record (name, digest, dataset JSON, tags JSON) dataset inputs of an active run.

        A dataset (name and digest) already logged to the run is left as it is, as in MLflow.
        """
        with self._transaction() as conn:
            self._require_active_run(conn, run_id)
            conn.executemany(
                "INSERT OR IGNORE INTO run_inputs (run_uuid, dataset_name, dataset_digest,"
                " dataset_json, tags_json) VALUES (?, ?, ?, ?, ?)",
                [(run_id, *i) for i in inputs],
            )

    def search_datasets(
        self, experiment_ids: Sequence[str]
    ) -> list[tuple[str, str, str, str | None]]:
        """(experiment id, name, digest, context) of the datasets logged to runs of the
        experiments, each once, at most 1,000 (MLflow's search-datasets); the context is the
        input's ``mlflow.data.context`` tag, None without one."""
        ids = [int(e) for e in experiment_ids if e.isascii() and e.isdigit() and len(e) < 19]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.reader().execute(
            "SELECT DISTINCT r.experiment_id, i.dataset_name, i.dataset_digest,"
            " (SELECT json_extract(t.value, '$.value') FROM json_each(i.tags_json) AS t"
            "  WHERE json_extract(t.value, '$.key') = 'mlflow.data.context' LIMIT 1)"
            " FROM run_inputs AS i JOIN runs AS r ON r.run_uuid = i.run_uuid"
            f" WHERE r.experiment_id IN ({marks})"
            " ORDER BY r.experiment_id, i.dataset_name, i.dataset_digest LIMIT 1000",
            ids,
        )
        return [(str(r[0]), r[1], r[2], r[3]) for r in rows]

    # -- metric history ----------------------------------------------------------------------

    def metric_chunks(self, run_id: str, key: str) -> list[tuple[bytes, bytes, bytes]]:
        """The packed (steps, values, timestamps) chunks of one series, in logged order."""
        return list(self._chunk_rows(run_id, key))

    def _chunk_rows(self, run_id: str, key: str) -> Iterator[tuple[bytes, bytes, bytes]]:
        conn = self.reader()
        if conn.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is None:
            raise _missing(f"Run '{run_id}' not found")
        for r in conn.execute(
            "SELECT steps, vals, ts FROM metric_chunks WHERE run_uuid = ? AND key = ?"
            " ORDER BY chunk_id",
            (run_id, key),
        ):
            yield (r[0], r[1], r[2])

    def metric_history(self, run_id: str, key: str) -> Points:
        """A whole series as (steps, values, timestamps in seconds) arrays."""
        steps, vals, ts = array("q"), array("d"), array("d")
        # Chunk by chunk from the cursor: the packed rows are never all held beside the arrays.
        for s, v, t in self._chunk_rows(run_id, key):
            steps.frombytes(s)
            vals.frombytes(v)
            ts.frombytes(t)
        return steps, vals, ts

    # -- reads for the web UI (collector/ui_api.py) -------------------------------------------

    def experiment_summaries(self) -> list[Row]:
        """Every experiment with its tags, run count and last activity (epoch ms).

        Last activity is the latest start, end or heartbeat of any of its runs (the
        experiment's own last update when it has none).
        """
        conn = self.reader()
        out: dict[int, Row] = {}
        for r in conn.execute(
            "SELECT e.experiment_id, e.name, e.lifecycle_stage, e.creation_time,"
            " e.last_update_time,"
            " (SELECT COUNT(*) FROM runs r WHERE r.experiment_id = e.experiment_id"
            "   AND r.lifecycle_stage = 'active'),"
            " (SELECT MAX(MAX(r.start_time, COALESCE(r.end_time, 0),"
            "   COALESCE(r.last_heartbeat, 0))) FROM runs r"
            "   WHERE r.experiment_id = e.experiment_id)"
            " FROM experiments e ORDER BY e.experiment_id"
        ):
            out[r[0]] = {
                "experiment_id": str(r[0]),
                "name": r[1],
                "lifecycle_stage": r[2],
                "creation_time": r[3],
                "last_update_time": r[4],
                "run_count": r[5],
                "last_activity": r[6] if r[6] is not None else r[4],
                "tags": {},
            }
        tags = conn.execute("SELECT experiment_id, key, value FROM experiment_tags")
        for eid, key, value in tags:
            if eid in out:
                out[eid]["tags"][key] = value
        return list(out.values())

    def experiment_columns(self, experiment_id: str) -> dict[str, list[str]]:
        """The param, metric and tag keys that the experiment's runs use, sorted."""
        conn = self.reader()
        eid = _int_id(experiment_id)
        out: dict[str, list[str]] = {}
        for field, table in (("params", "params"), ("metrics", "latest_metrics"), ("tags", "tags")):
            out[field] = [
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT t.key FROM {table} t JOIN runs r ON r.run_uuid = t.run_uuid"
                    " WHERE r.experiment_id = ? ORDER BY t.key",
                    (eid,),
                )
            ]
        return out

    def child_run_ids(self, run_id: str) -> list[str]:
        """Runs whose ``mlflow.parentRunId`` tag names this run."""
        return [
            r[0]
            for r in self.reader().execute(
                "SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = ?",
                (run_id,),
            )
        ]

    def metric_series_info(self, run_id: str) -> list[Row]:
        """Each metric key of a run with its point count and step range."""
        return [
            {"key": r[0], "points": r[1], "min_step": r[2], "max_step": r[3]}
            for r in self.reader().execute(
                "SELECT key, SUM(n), MIN(min_step), MAX(max_step) FROM metric_chunks"
                " WHERE run_uuid = ? GROUP BY key ORDER BY key",
                (run_id,),
            )
        ]

    def metric_extremes(self, experiment_id: str, key: str) -> dict[str, tuple[float, float]]:
        """The smallest and largest value of one metric for each run of an experiment
        that logged it (NaN ignored; NaN when a run logged only NaN), read from the
        chunks' block summaries, or from the values of chunks that hold NaN."""
        from flightlog.collector.downsample import extremes, summary_extremes

        conn = self.reader()
        found: dict[str, list[float]] = {}
        for chunk_id, run_id, blob in conn.execute(
            "SELECT c.chunk_id, c.run_uuid, c.summary FROM runs r JOIN metric_chunks c"
            " ON c.run_uuid = r.run_uuid AND c.key = ? WHERE r.experiment_id = ?",
            (key, _int_id(experiment_id)),
        ):
            got = summary_extremes(blob)
            if got is None:
                vals = array("d")
                vals.frombytes(
                    conn.execute(
                        "SELECT vals FROM metric_chunks WHERE chunk_id = ?", (chunk_id,)
                    ).fetchone()[0]
                )
                got = extremes(vals)
            now = found.setdefault(run_id, [math.nan, math.nan])
            now[0], now[1] = extremes((now[0], got[0]))[0], extremes((now[1], got[1]))[1]
        return {r: (v[0], v[1]) for r, v in found.items()}

    def metric_values_at_step(
        self, experiment_id: str, key: str, step: int
    ) -> dict[str, tuple[int, float]]:
        """Per run of an experiment: (step, value) of its point of a metric with the
        largest step at or before ``step`` (collector.step_values)."""
        from flightlog.collector.step_values import values_at_step

        spans = (
            self.reader()
            .execute(
                "SELECT c.chunk_id, c.run_uuid, c.min_step, c.max_step FROM runs r"
                " JOIN metric_chunks c ON c.run_uuid = r.run_uuid AND c.key = ?"
                " WHERE r.experiment_id = ? AND c.min_step <= ?",
                (key, _int_id(experiment_id), step),
            )
            .fetchall()
        )
        return values_at_step(spans, lambda ids: self.metric_chunk_data(ids, summaries=False), step)

    def metric_chunk_spans(
        self, run_id: str, key: str, min_step: int | None, max_step: int | None
    ) -> list[tuple[int, int, int, int]]:
        """(chunk_id, points, min_step, max_step) of a series' chunks that overlap a step
        range (None: unbounded), in logged order."""
        lo = min_step if min_step is not None else -(2**63)
        hi = max_step if max_step is not None else 2**63 - 1
        return [
            (r[0], r[1], r[2], r[3])
            for r in self.reader().execute(
                "SELECT chunk_id, n, min_step, max_step FROM metric_chunks"
                " WHERE run_uuid = ? AND key = ? AND max_step >= ? AND min_step <= ?"
                " ORDER BY chunk_id",
                (run_id, key, lo, hi),
            )
        ]

    def metric_chunk_spans_many(
        self,
        run_ids: Sequence[str],
        keys: Sequence[str],
        min_step: int | None,
        max_step: int | None,
    ) -> dict[tuple[str, str], list[tuple[int, int, int, int]]]:
        """(run_id, key) -> :meth:`metric_chunk_spans` of that series, for every pair of
        the given runs and keys, in one query per 500 runs (the series index serves each
        (run, key) pair of the IN lists)."""
        lo = min_step if min_step is not None else -(2**63)
        hi = max_step if max_step is not None else 2**63 - 1
        out: dict[tuple[str, str], list[tuple[int, int, int, int]]] = {}
        conn = self.reader()
        runs, key_list = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
        key_marks = ",".join("?" * len(key_list))
        for start in range(0, len(runs), 500):
            part = runs[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in conn.execute(
                "SELECT run_uuid, key, chunk_id, n, min_step, max_step FROM metric_chunks"
                f" WHERE run_uuid IN ({marks}) AND key IN ({key_marks})"
                " AND max_step >= ? AND min_step <= ? ORDER BY chunk_id",
                (*part, *key_list, lo, hi),
            ):
                out.setdefault((r[0], r[1]), []).append((r[2], r[3], r[4], r[5]))
        return out

    def metric_chunk_data(
        self, chunk_ids: Sequence[int], *, summaries: bool
    ) -> dict[int, tuple[bytes, ...]]:
        """Chunks by id: their block summary (``summaries=True``) or their packed
        (steps, values, timestamps) arrays."""
        columns = "summary" if summaries else "steps, vals, ts"
        out: dict[int, tuple[bytes, ...]] = {}
        conn = self.reader()
        ids = list(chunk_ids)
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in conn.execute(
                f"SELECT chunk_id, {columns} FROM metric_chunks WHERE chunk_id IN ({marks})", part
            ):
                out[r[0]] = tuple(r[1:])
        return out

    def series_extent(self, run_id: str, key: str) -> tuple[int, int, int]:
        """(points, smallest step, largest step) of a series; (0, 0, 0) when it is empty."""
        row = (
            self.reader()
            .execute(
                "SELECT COALESCE(SUM(n), 0), COALESCE(MIN(min_step), 0),"
                " COALESCE(MAX(max_step), 0) FROM metric_chunks WHERE run_uuid = ? AND key = ?",
                (run_id, key),
            )
            .fetchone()
        )
        return int(row[0]), int(row[1]), int(row[2])

    def block_summaries(self, run_id: str, key: str) -> array[float]:
        """The series' block summaries (collector.downsample), concatenated in order."""
        summary = array("d")
        for (blob,) in self.reader().execute(
            "SELECT summary FROM metric_chunks WHERE run_uuid = ? AND key = ? ORDER BY chunk_id",
            (run_id, key),
        ):
            summary.frombytes(blob)
        return summary

    def sampled_series(self, run_id: str, key: str, max_points: int) -> Points:
        """At most ``max_points`` points of a series, its shape kept (collector.downsample)."""
        return downsample.sampled_series(self, run_id, key, max_points)

    # -- search -------------------------------------------------------------------------------

    def search_experiments(
        self,
        view_type: int,
        max_results: int,
        filter_string: str | None,
        order_by: Sequence[str] | None,
        page_token: str | None,
    ) -> tuple[list[Row], str | None]:
        """One page of experiments matching a filter, in order, and the next page's token."""
        ids, token = search_experiment_ids(
            self.reader(), view_type, max_results, filter_string, order_by, page_token
        )
        return self.list_experiments(ids), token

    def search_run_ids(
        self,
        experiment_ids: Sequence[str],
        filter_string: str | None,
        run_view_type: int,
        max_results: int,
        order_by: Sequence[str] | None,
        page_token: str | None,
    ) -> tuple[list[str], str | None]:
        """One page of matching run ids, in order, and the next page's token."""
        return search_run_ids(
            self.reader(),
            experiment_ids,
            filter_string,
            run_view_type,
            max_results,
            order_by,
            page_token,
        )

    def prune_batch_ids(self, older_than_ms: int) -> int:
        """Forget the ids of batches received before the given time; return how many.

        A batch resent after its id was forgotten would be stored again, so the
        retention must outlast any resend: agents resend within seconds, a spool sent
        by ``flightlog sync`` holds batches that were never acknowledged (never stored).
        """
        with self._transaction() as conn:
            cur = conn.execute("DELETE FROM batches WHERE received_at < ?", (older_than_ms,))
            return int(cur.rowcount)

    def fail_stale_runs(self, older_than_ms: int) -> list[str]:
        """Mark FAILED the RUNNING runs whose last heartbeat is older than the given time.

        Sets their end time and the tag ``flightlog.endReason=heartbeat_timeout``;
        returns their ids. Runs without a heartbeat time (not made by an agent) are
        never touched.
        """
        with self._transaction() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT run_uuid FROM runs WHERE status = 'RUNNING'"
                    " AND last_heartbeat IS NOT NULL AND last_heartbeat < ?",
                    (older_than_ms,),
                )
            ]
            t = now_ms()
            for run_id in ids:
                conn.execute(
                    "UPDATE runs SET status = 'FAILED', end_time = ? WHERE run_uuid = ?",
                    (t, run_id),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                    (run_id, END_REASON_TAG, HEARTBEAT_TIMEOUT),
                )
        return ids


END_REASON_TAG = "flightlog.endReason"
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
# Errors of an op's arguments (a wrong type, a missing field): the op is refused, the
# batch goes on. sqlite3.OperationalError (locked, disk full) is not among them: it is
# the store's trouble, answered 500, and the client retries.
_MALFORMED = (
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    OverflowError,
    sqlite3.InterfaceError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
)


def _malformed(op: str, e: Exception) -> dict[str, str]:
    return {
        "op": op,
        "error_code": INVALID_PARAMETER_VALUE,
        "message": f"Malformed {op!r} operation: {type(e).__name__}: {str(e)[:200]}",
    }


def _clear_timeout_reason(conn: sqlite3.Connection, run_id: str) -> bool:
    """Forget that the heartbeat watch failed this run; True if it had."""
    cur = conn.execute(
        "DELETE FROM tags WHERE run_uuid = ? AND key = ? AND value = ?",
        (run_id, END_REASON_TAG, HEARTBEAT_TIMEOUT),
    )
    return cur.rowcount > 0


def _int_id(experiment_id: Any) -> int:
    return parse_experiment_id(experiment_id)


def _metrics_json(conn: sqlite3.Cursor, ids: tuple[str]) -> dict[str, str]:
    """Each run's latest metrics as a JSON array, by run id (``ids``: a JSON id list).

    SQLite writes each metric's JSON up to its value (``{"key":..,"timestamp":..,
    "step":..,"value":``, the value last so that what follows it is always ``}``), and
    orjson writes all the page's values in one call: the shortest text that reads back
    as the same double, which SQLite's own JSON (15 digits) is not. NaN (stored as
    NULL) and the infinities arrive as the strings protobuf's JSON mapping uses.
    """
    rows = conn.execute(
        "SELECT run_uuid, '{\"key\":' || json_quote(key) || ',\"timestamp\":' || timestamp"
        " || ',\"step\":' || step || ',\"value\":',"
        " CASE WHEN is_nan THEN 'NaN' WHEN value > 1.7976931348623157e308 THEN 'Infinity'"
        " WHEN value < -1.7976931348623157e308 THEN '-Infinity' ELSE value END"
        " FROM latest_metrics WHERE run_uuid IN (SELECT value FROM json_each(?))"
        " ORDER BY run_uuid, key",
        ids,
    ).fetchall()
    if not rows:
        return {}
    run_ids, heads, values = zip(*rows, strict=True)
    # Floats never contain a comma, and neither do the three strings.
    texts = list(map(str.__add__, heads, orjson.dumps(values)[1:-1].decode().split(",")))
    out: dict[str, str] = {}
    start = 0
    # Rows come in run id order, so a run's metrics are the next `count` texts.
    for run_id, count in Counter(run_ids).items():
        out[run_id] = "[" + "},".join(texts[start : start + count]) + "}]"
        start += count
    return out


# The op-dispatch table: every op name of flightlog.core.ops and how this store applies
# it. The checks for the same names are batch_checks.CHECKS; tests/test_store.py checks
# that both tables cover exactly ops.ALL.
_APPLY: dict[str, Callable[[SqliteStore, sqlite3.Connection, dict[str, Any]], None]] = {
    ops.CREATE_RUN: SqliteStore._create_run,
    ops.LOG_PARAMS: SqliteStore._log_params,
    ops.SET_TAGS: SqliteStore._set_tags,
    ops.DELETE_TAG: SqliteStore._delete_tag,
    ops.UPDATE_RUN: SqliteStore._update_run,
    ops.LOG_METRIC: SqliteStore._log_metric,
    ops.HEARTBEAT: SqliteStore._heartbeat,
}
