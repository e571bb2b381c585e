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
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from flightlog.collector.downsample import block_summary
from flightlog.core.entities import RunStatus
from flightlog.core.exceptions import (
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    MlflowException,
)

DEFAULT_EXPERIMENT_ID = 0
DEFAULT_EXPERIMENT_NAME = "Default"

Row = dict[str, Any]


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
            self._writer.executescript(_schema_sql("schema.sql"))
            self._run_optional_sql("search_indexes.sql")
            self._run_optional_sql("inputs_schema.sql")
            self._ensure_default_experiment()

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        # 16 KiB pages: metric chunks are large blobs, and bigger pages shorten their
        # overflow chains (only takes effect on a new file, before WAL is switched on).
        conn.execute("PRAGMA page_size=16384")
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of the collector process (the
        # failure we guard against); FULL would also survive power loss at a cost per commit.
        conn.execute(
            f"PRAGMA synchronous={os.environ.get('FLIGHTLOG_SQLITE_SYNCHRONOUS', 'NORMAL')}"
        )
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        conn.row_factory = sqlite3.Row
        self._prepare_connection(conn)
        return conn

    def _prepare_connection(self, conn: sqlite3.Connection) -> None:
        """Register the SQL functions compiled search filters call (ILIKE's lowering)."""
        from flightlog.collector.filters import register_sql_functions

        register_sql_functions(conn)

    def _run_optional_sql(self, name: str) -> None:
        try:
            sql = _schema_sql(name)
        except FileNotFoundError:
            return
        self._writer.executescript(sql)

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
        with self._write_lock:
            conn = self._writer
            if conn.execute("SELECT 1 FROM experiments WHERE name = ?", (name,)).fetchone():
                raise MlflowException(
                    f"Experiment(name={name}) already exists.", RESOURCE_ALREADY_EXISTS
                )
            t = now_ms()
            conn.execute("BEGIN IMMEDIATE")
            try:
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
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
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
        with self._write_lock:
            conn = self._writer
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
            conn.execute("BEGIN IMMEDIATE")
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
            conn.execute("COMMIT")

    def delete_experiment(self, experiment_id: str) -> None:
        """Mark an experiment and its runs deleted."""
        self._set_experiment_stage(experiment_id, "deleted")

    def restore_experiment(self, experiment_id: str) -> None:
        """Bring a deleted experiment and its runs back."""
        self._set_experiment_stage(experiment_id, "active")

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Rename an experiment (MLflow's update_experiment)."""
        eid = _int_id(experiment_id)
        with self._write_lock:
            conn = self._writer
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
        with self._write_lock:
            conn = self._writer
            if not conn.execute(
                "SELECT 1 FROM experiments WHERE experiment_id = ?", (eid,)
            ).fetchone():
                raise _missing(f"No Experiment with id={experiment_id} exists")
            conn.execute(
                "INSERT OR REPLACE INTO experiment_tags VALUES (?, ?, ?)", (eid, key, value)
            )

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Delete an experiment tag; a missing tag is an error, as in MLflow."""
        with self._write_lock:
            cur = self._writer.execute(
                "DELETE FROM experiment_tags WHERE experiment_id = ? AND key = ?",
                (_int_id(experiment_id), key),
            )
            if cur.rowcount == 0:
                raise _missing(f"No tag with name: {key} in experiment {experiment_id}")

    # -- writes from ingest --------------------------------------------------------------

    def apply_batch(
        self,
        batch_id: str | None,
        ops: Sequence[tuple[str, dict[str, Any]]],
        series: Sequence[tuple[str, str, array[int], array[float], array[float]]],
    ) -> tuple[bool, list[dict[str, str]]]:
        """Apply one ingest batch in one transaction.

        ``ops`` are (name, args) records applied in order; ``series`` are
        (run_id, key, steps, values, timestamps) column chunks. A batch id seen before
        is acknowledged without being applied again. Returns (duplicate, errors): an op
        that fails (a changed param, an unknown run) is skipped and reported, and the
        rest of the batch is stored.
        """
        errors: list[dict[str, str]] = []
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                if batch_id is not None:
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO batches VALUES (?, ?)", (batch_id, now_ms())
                    )
                    if cur.rowcount == 0:
                        conn.execute("ROLLBACK")
                        return True, []
                known_runs: dict[str, bool] = {}
                for name, args in ops:
                    # A savepoint per op: a failing op leaves nothing half-applied.
                    conn.execute("SAVEPOINT op")
                    try:
                        self._apply_op(conn, name, args, known_runs)
                    except MlflowException as e:
                        conn.execute("ROLLBACK TO op")
                        errors.append(
                            {"op": name, "error_code": e.error_code, "message": e.message}
                        )
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
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
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
        if name == "create_run":
            self._create_run(conn, a)
            known_runs[a["run_id"]] = True
            return
        run_id = a.get("run_id")
        if not isinstance(run_id, str) or not self._run_exists(conn, run_id, known_runs):
            raise _missing(f"Run '{run_id}' not found")
        if name == "log_params":
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
        elif name == "set_tags":
            for k, v in a["tags"].items():
                conn.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (run_id, k, v))
                if k == "mlflow.runName":
                    conn.execute("UPDATE runs SET run_name = ? WHERE run_uuid = ?", (v, run_id))
        elif name == "delete_tag":
            cur = conn.execute(
                "DELETE FROM tags WHERE run_uuid = ? AND key = ?", (run_id, a["key"])
            )
            if cur.rowcount == 0:
                raise _missing(f"No tag with name: {a['key']} in run with id {run_id}")
        elif name == "update_run":
            self._update_run(conn, run_id, a)
        elif name == "log_metric":
            # A single point from a client that does not send column chunks (REST API).
            steps, vals, ts = (
                array("q", [a["step"]]),
                array("d", [a["value"]]),
                array("d", [a["timestamp"] / 1000.0]),
            )
            self._insert_series(conn, run_id, a["key"], steps, vals, ts)
        elif name == "heartbeat":
            conn.execute(
                "UPDATE runs SET last_heartbeat = ? WHERE run_uuid = ?", (now_ms(), run_id)
            )
            # A run failed for want of heartbeats whose agent was only cut off (collector
            # overloaded, network down) is heard again: it is running after all.
            if _clear_timeout_reason(conn, run_id):
                conn.execute(
                    "UPDATE runs SET status = 'RUNNING', end_time = NULL"
                    " WHERE run_uuid = ? AND status = 'FAILED'",
                    (run_id,),
                )
        else:
            raise MlflowException(f"Unknown operation {name!r}", INVALID_PARAMETER_VALUE)

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

    def _update_run(self, conn: sqlite3.Connection, run_id: str, a: dict[str, Any]) -> None:
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

    def _set_run_stage(self, run_id: str, stage: str) -> None:
        with self._write_lock:
            cur = self._writer.execute(
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

    def run_experiment_artifact_uri(self, run_id: str) -> str:
        """A run's artifact URI."""
        row = (
            self.reader()
            .execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,))
            .fetchone()
        )
        if row is None:
            raise _missing(f"Run '{run_id}' not found")
        return str(row[0])

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
        ops: Sequence[tuple[str, dict[str, Any]]],
        series: Sequence[tuple[str, array[int], array[float], array[float]]] = (),
    ) -> None:
        """Apply ops and (key, steps, values, timestamps) series to one active run, atomically.

        Unlike :meth:`apply_batch`, which stores what it can and reports the rest, the first
        failure raises and nothing is stored: a REST client gets one answer for its request.
        """
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._require_active_run(conn, run_id)
                known_runs = {run_id: True}
                for name, args in ops:
                    self._apply_op(conn, name, {**args, "run_id": run_id}, known_runs)
                for key, steps, vals, ts in series:
                    self._insert_series(conn, run_id, key, steps, vals, ts)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def log_inputs(self, run_id: str, inputs: Sequence[tuple[str, str, str, str]]) -> None:
        """Record (name, digest, dataset JSON, tags JSON) dataset inputs of an active run.

        A dataset (name and digest) already logged to the run is left as it is, as in MLflow.
        """
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._require_active_run(conn, run_id)
                conn.executemany(
                    "INSERT OR IGNORE INTO run_inputs (run_uuid, dataset_name, dataset_digest,"
                    " dataset_json, tags_json) VALUES (?, ?, ?, ?, ?)",
                    [(run_id, *i) for i in inputs],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- metric history ----------------------------------------------------------------------

    def metric_chunks(self, run_id: str, key: str) -> list[tuple[bytes, bytes, bytes]]:
        """The packed (steps, values, timestamps) chunks of one series, in logged order."""
        conn = self.reader()
        if conn.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is None:
            raise _missing(f"Run '{run_id}' not found")
        return [
            (r[0], r[1], r[2])
            for r in conn.execute(
                "SELECT steps, vals, ts FROM metric_chunks WHERE run_uuid = ? AND key = ?"
                " ORDER BY chunk_id",
                (run_id, key),
            )
        ]

    def metric_history(
        self, run_id: str, key: str
    ) -> tuple[array[int], array[float], array[float]]:
        """A whole series as (steps, values, timestamps in seconds) arrays."""
        steps, vals, ts = array("q"), array("d"), array("d")
        for s, v, t in self.metric_chunks(run_id, key):
            steps.frombytes(s)
            vals.frombytes(v)
            ts.frombytes(t)
        return steps, vals, ts

    # -- search -------------------------------------------------------------------------------

    def search_runs(
        self,
        experiment_ids: Sequence[str],
        filter_string: str | None,
        run_view_type: int,
        max_results: int,
        order_by: Sequence[str] | None,
        page_token: str | None,
    ) -> tuple[list[Row], str | None]:
        """One page of runs matching a filter, in order, and the next page's token."""
        from flightlog.collector.search import search_run_ids

        ids, token = search_run_ids(
            self.reader(),
            experiment_ids,
            filter_string,
            run_view_type,
            max_results,
            order_by,
            page_token,
        )
        return self.get_runs(ids), token

    def search_experiments(
        self,
        view_type: int,
        max_results: int,
        filter_string: str | None,
        order_by: Sequence[str] | None,
        page_token: str | None,
    ) -> tuple[list[Row], str | None]:
        """One page of experiments matching a filter, in order, and the next page's token."""
        from flightlog.collector.search import search_experiment_ids

        ids, token = search_experiment_ids(
            self.reader(), view_type, max_results, filter_string, order_by, page_token
        )
        return self.list_experiments(ids), token

    def prune_batch_ids(self, older_than_ms: int) -> int:
        """Forget the ids of batches received before the given time; return how many.

        A batch resent after its id was forgotten would be stored again, so the
        retention must outlast any resend: agents resend within seconds, a spool sent
        by ``flightlog sync`` holds batches that were never acknowledged (never stored).
        """
        with self._write_lock:
            cur = self._writer.execute(
                "DELETE FROM batches WHERE received_at < ?", (older_than_ms,)
            )
            return int(cur.rowcount)

    def fail_stale_runs(self, older_than_ms: int) -> list[str]:
        """Mark FAILED the RUNNING runs whose last heartbeat is older than the given time.

        Sets their end time and the tag ``flightlog.endReason=heartbeat_timeout``;
        returns their ids. Runs without a heartbeat time (not made by an agent) are
        never touched.
        """
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
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
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return ids

    def find_stale_runs(self, older_than_ms: int) -> list[str]:
        """RUNNING runs whose last heartbeat is older than the given time."""
        rows = (
            self.reader()
            .execute(
                "SELECT run_uuid FROM runs WHERE status = 'RUNNING' AND last_heartbeat < ?",
                (older_than_ms,),
            )
            .fetchall()
        )
        return [r[0] for r in rows]


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
    try:
        return int(experiment_id)
    except (TypeError, ValueError):
        raise MlflowException(
            f"Invalid experiment id {experiment_id!r}: expected an integer id.",
            INVALID_PARAMETER_VALUE,
        ) from None
