"""PostgresStore: the tracking store on PostgreSQL, shared by any number of collectors.

``flightlog collector --store postgresql://user:pass@host:port/db`` (or ``flightlog
server --backend-store-uri postgresql://...``) serves it. The model is the SQLite store's
(collector/store.py): metric points as column chunks, the latest value per series,
ingest batch ids for idempotency. What is PostgreSQL's own:

* psycopg 3 with a connection pool; an ingest batch is one transaction whose chunk rows
  and latest-value upserts go as pipelined ``executemany`` batches, not a round trip each.
* Several collectors share one database and each answers any request: batch ids are a
  primary key, so a batch that reaches two collectors at once is stored by exactly one
  (the second insert waits for the first transaction and then finds the id).
* Versioned migrations (``pg_schema_<n>.sql``) are applied at start under an advisory
  lock, so collectors starting together migrate once.
* Search compiles to PostgreSQL (:data:`flightlog.collector.filters.POSTGRES`), with the
  same semantics as on SQLite.

Needs the ``postgres`` extra (``pip install 'flightlog[postgres]'``); imported only when a
``postgresql://`` store is asked for.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import orjson

from flightlog.collector import downsample
from flightlog.collector.downsample import block_summary
from flightlog.collector.filters import POSTGRES
from flightlog.collector.search import search_experiment_ids, search_run_ids
from flightlog.collector.store import END_REASON_TAG, HEARTBEAT_TIMEOUT, latest_index
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
from flightlog.core import ops
from flightlog.core.entities import RunStatus
from flightlog.core.exceptions import (
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    MlflowException,
)

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The PostgreSQL store needs psycopg 3: pip install 'flightlog[postgres]'"
    ) from e

#: (version, file) of every migration, in order. Never edit an applied one: add another.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, "pg_schema_1.sql"), (2, "pg_schema_2.sql"))
#: The advisory lock key collectors take while migrating ("flightlog" in ASCII, truncated).
MIGRATION_LOCK = 0x666C6967_68746C6F
_BIGINT = 2**63


def is_postgres_uri(uri: str) -> bool:
    """Whether a store URI names a PostgreSQL database."""
    return uri.startswith(("postgresql://", "postgres://"))


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def _missing(what: str) -> MlflowException:
    return MlflowException(what, RESOURCE_DOES_NOT_EXIST)


def _int_id(experiment_id: Any) -> int:
    try:
        value = int(experiment_id)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value < _BIGINT:
        raise MlflowException(
            f"Invalid experiment id {experiment_id!r}: expected an integer id.",
            INVALID_PARAMETER_VALUE,
        )
    return value


# Errors of an op's arguments: the op is refused and the batch goes on. Connection and
# server trouble (OperationalError) is not among them: answered 500, the client retries.
_MALFORMED: tuple[type[BaseException], ...] = (
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    OverflowError,
    psycopg.DataError,
    psycopg.IntegrityError,
)


def _malformed(op: str, e: BaseException) -> dict[str, str]:
    return {
        "op": op,
        "error_code": INVALID_PARAMETER_VALUE,
        "message": f"Malformed {op!r} operation: {type(e).__name__}: {str(e)[:200]}",
    }


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply the migrations this database lacks, under the advisory lock; their versions.

    Everything is committed before the lock is released: a collector that waited for
    the lock then reads the versions this one applied, and does not apply them again.
    """
    applied: list[int] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    conn.commit()
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS flightlog_migrations ("
            " version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
        )
        conn.commit()
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM flightlog_migrations").fetchone()
        current = int(row[0]) if row else 0
        for version, name in MIGRATIONS:
            if version <= current:
                continue
            sql = resources.files("flightlog.collector").joinpath(name).read_text("utf-8")
            with conn.transaction():
                conn.execute(sql)
                conn.execute(
                    "INSERT INTO flightlog_migrations VALUES (%s, %s)", (version, now_ms())
                )
            applied.append(version)
        with conn.transaction():
            conn.execute(
                "INSERT INTO experiments (experiment_id, name, artifact_location,"
                " lifecycle_stage, creation_time, last_update_time)"
                " VALUES (%s, %s, %s, 'active', %s, %s) ON CONFLICT DO NOTHING",
                (DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME, "", now_ms(), now_ms()),
            )
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        conn.commit()
    return applied


def _configure(conn: psycopg.Connection[Any]) -> None:
    # Doubles that PostgreSQL writes as text (runs_json) round-trip exactly, whatever
    # the server's own setting (0 would print 15 significant digits).
    conn.execute("SET extra_float_digits = 3")
    conn.commit()


class PostgresStore:
    """The tracking store on a PostgreSQL database, with an artifact root for new experiments."""

    def __init__(self, uri: str, artifact_root: str, *, pool_size: int = 8) -> None:
        self.uri = uri
        self.artifact_root = artifact_root.rstrip("/")
        with psycopg.connect(uri, autocommit=False) as conn:
            migrate(conn)
            # The default experiment's location follows this collector's artifact root
            # only if no collector set one yet.
            conn.execute(
                "UPDATE experiments SET artifact_location = %s"
                " WHERE experiment_id = %s AND artifact_location = ''",
                (f"{self.artifact_root}/{DEFAULT_EXPERIMENT_ID}", DEFAULT_EXPERIMENT_ID),
            )
            conn.commit()
        # Runs this collector saw stored: runs are never removed from the database, so
        # a batch of points for them needs no existence check (see _apply_points).
        self._stored_runs: set[str] = set()
        # check: a connection broken while idle (the database restarted) is replaced
        # before use instead of failing the request that draws it.
        self._pool = ConnectionPool(
            uri,
            min_size=1,
            max_size=pool_size,
            open=True,
            kwargs={"autocommit": False},
            check=ConnectionPool.check_connection,
            configure=_configure,
        )

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.close()

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection inside one transaction: committed at the end of the block,
        rolled back when it raises."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn:
            yield conn

    # -- experiments -------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create an experiment; its name must be unused (deleted ones included, as MLflow)."""
        try:
            with self._transaction() as conn:
                t = now_ms()
                row = conn.execute(
                    "INSERT INTO experiments (name, artifact_location, lifecycle_stage,"
                    " creation_time, last_update_time) VALUES (%s, '', 'active', %s, %s)"
                    " RETURNING experiment_id",
                    (name, t, t),
                ).fetchone()
                assert row is not None
                exp_id = int(row[0])
                location = (
                    artifact_location.rstrip("/")
                    if artifact_location
                    else f"{self.artifact_root}/{exp_id}"
                )
                conn.execute(
                    "UPDATE experiments SET artifact_location = %s WHERE experiment_id = %s",
                    (location, exp_id),
                )
                self._upsert_tags(conn, "experiment_tags", "experiment_id", exp_id, tags or {})
        except psycopg.errors.UniqueViolation:
            raise MlflowException(
                f"Experiment(name={name}) already exists.", RESOURCE_ALREADY_EXISTS
            ) from None
        return str(exp_id)

    @staticmethod
    def _upsert_tags(
        conn: psycopg.Connection[Any], table: str, id_column: str, owner: Any, tags: dict[str, str]
    ) -> None:
        if not tags:
            return
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} ({id_column}, key, value) VALUES (%s, %s, %s)"
                f" ON CONFLICT ({id_column}, key) DO UPDATE SET value = excluded.value",
                [(owner, k, v) for k, v in tags.items()],
            )

    def _experiments(self, conn: psycopg.Connection[Any], where: str, arg: Any) -> list[Row]:
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                "SELECT experiment_id, name, artifact_location, lifecycle_stage, creation_time,"
                f" last_update_time FROM experiments WHERE {where}",
                (arg,),
            ).fetchall()
            ids = [r["experiment_id"] for r in rows]
            tags: dict[int, dict[str, str]] = {i: {} for i in ids}
            for eid, key, value in conn.execute(
                "SELECT experiment_id, key, value FROM experiment_tags"
                " WHERE experiment_id = ANY(%s)",
                (ids,),
            ):
                tags[eid][key] = value
        out = []
        for r in rows:
            exp = dict(r)
            exp["tags"] = tags[r["experiment_id"]]
            exp["experiment_id"] = str(r["experiment_id"])
            out.append(exp)
        return out

    def get_experiment(self, experiment_id: str) -> Row:
        """An experiment by id, deleted ones included (as MLflow)."""
        with self._read() as conn:
            found = self._experiments(conn, "experiment_id = %s", _int_id(experiment_id))
        if not found:
            raise _missing(f"No Experiment with id={experiment_id} exists")
        return found[0]

    def get_experiment_by_name(self, name: str) -> Row | None:
        """An experiment by name, or None."""
        with self._read() as conn:
            found = self._experiments(conn, "name = %s", name)
        return found[0] if found else None

    def list_experiments(self, ids: Iterable[str]) -> list[Row]:
        """Experiments by id, in the order given; unknown ids are skipped."""
        wanted = [_int_id(i) for i in ids]
        with self._read() as conn:
            found = {
                e["experiment_id"]: e
                for e in self._experiments(conn, "experiment_id = ANY(%s)", wanted)
            }
        return [found[str(i)] for i in wanted if str(i) in found]

    def _set_experiment_stage(self, experiment_id: str, stage: str) -> None:
        eid = _int_id(experiment_id)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT lifecycle_stage FROM experiments WHERE experiment_id = %s FOR UPDATE",
                (eid,),
            ).fetchone()
            if row is None:
                raise _missing(f"No Experiment with id={experiment_id} exists")
            if stage == "deleted" and eid == DEFAULT_EXPERIMENT_ID:
                raise MlflowException(
                    "Cannot delete the default experiment '0'.", INVALID_PARAMETER_VALUE
                )
            want_from = "active" if stage == "deleted" else "deleted"
            if row[0] != want_from:
                raise MlflowException(
                    f"Cannot {'delete' if stage == 'deleted' else 'restore'} experiment "
                    f"{experiment_id}: it is {row[0]}.",
                    INVALID_STATE,
                )
            t = now_ms()
            conn.execute(
                "UPDATE experiments SET lifecycle_stage = %s, last_update_time = %s"
                " WHERE experiment_id = %s",
                (stage, t, eid),
            )
            conn.execute(
                "UPDATE runs SET lifecycle_stage = %s, deleted_time = %s WHERE experiment_id = %s",
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
        try:
            with self._transaction() as conn:
                cur = conn.execute(
                    "UPDATE experiments SET name = %s, last_update_time = %s"
                    " WHERE experiment_id = %s",
                    (new_name, now_ms(), eid),
                )
                if cur.rowcount == 0:
                    raise _missing(f"No Experiment with id={experiment_id} exists")
        except psycopg.errors.UniqueViolation:
            raise MlflowException(
                f"Experiment(name={new_name}) already exists.", RESOURCE_ALREADY_EXISTS
            ) from None

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Set (upsert) an experiment tag."""
        eid = _int_id(experiment_id)
        with self._transaction() as conn:
            if (
                conn.execute(
                    "SELECT 1 FROM experiments WHERE experiment_id = %s", (eid,)
                ).fetchone()
                is None
            ):
                raise _missing(f"No Experiment with id={experiment_id} exists")
            self._upsert_tags(conn, "experiment_tags", "experiment_id", eid, {key: value})

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Delete an experiment tag; a missing tag is an error, as in MLflow."""
        with self._transaction() as conn:
            cur = conn.execute(
                "DELETE FROM experiment_tags WHERE experiment_id = %s AND key = %s",
                (_int_id(experiment_id), key),
            )
            if cur.rowcount == 0:
                raise _missing(f"No tag with name: {key} in experiment {experiment_id}")

    # -- writes from ingest ----------------------------------------------------------------

    def apply_batch(
        self, batch_id: str | None, ops: Sequence[Op], series: Sequence[Series]
    ) -> tuple[bool, list[dict[str, str]]]:
        """Apply one ingest batch in one transaction; return (duplicate, errors).

        A batch id already stored (by this collector or another on the same database)
        is acknowledged without being applied again. A failing op is skipped and
        reported (a savepoint each), the rest is stored.
        """
        if not ops and series and all(s[0] in self._stored_runs for s in series):
            return self._apply_points(batch_id, series)
        errors: list[dict[str, str]] = []
        known: dict[str, bool] = {}
        with self._transaction() as conn:
            if batch_id is not None:
                cur = conn.execute(
                    "INSERT INTO batches VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (batch_id, now_ms()),
                )
                if cur.rowcount == 0:
                    return True, []
            for name, args in ops:
                try:
                    with conn.transaction():
                        self._apply_op(conn, name, args, known)
                except MlflowException as e:
                    errors.append({"op": name, "error_code": e.error_code, "message": e.message})
                except _MALFORMED as e:
                    errors.append(_malformed(name, e))
            self._check_runs(conn, {s[0] for s in series}, known)
            stored: list[Series] = []
            for run_id, key, steps, vals, ts in series:
                if not known.get(run_id):
                    errors.append(
                        {
                            "op": "log_metric",
                            "error_code": RESOURCE_DOES_NOT_EXIST,
                            "message": f"Run '{run_id}' not found; "
                            f"{len(steps)} points of {key!r} dropped",
                        }
                    )
                    continue
                stored.append((run_id, key, steps, vals, ts))
            # Series of one batch go in one pipelined write; a malformed one (a timestamp
            # out of range) is refused on its own beforehand, so none needs a savepoint.
            errors.extend(self._insert_series(conn, stored))
        self._remember_runs(r for r, found in known.items() if found)
        return False, errors

    def _remember_runs(self, run_ids: Iterable[str]) -> None:
        if len(self._stored_runs) > 100_000:  # bounded: forgetting costs one check again
            self._stored_runs.clear()
        self._stored_runs.update(run_ids)

    def _apply_points(
        self, batch_id: str | None, series: Sequence[Series]
    ) -> tuple[bool, list[dict[str, str]]]:
        """A batch of points only, for runs known to exist: the batch id, the chunks and
        the latest values go to PostgreSQL in one pipeline, one round trip before the
        commit instead of one per statement (store-level A/B on this shared machine:
        1.7x the points/s of batches of 5,000 at load 15, within the noise at load 10).
        A batch id already stored rolls the whole transaction back."""
        duplicate = False
        with self._pool.connection() as conn:
            with conn.transaction() as tx, conn.pipeline():
                cur = None
                if batch_id is not None:
                    cur = conn.execute(
                        "INSERT INTO batches VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                        (batch_id, now_ms()),
                    )
                errors = self._insert_series(conn, series)
                if cur is not None and cur.fetchone() is None:
                    duplicate = True
                    raise psycopg.Rollback(tx)
        return (True, []) if duplicate else (False, errors)

    def _check_runs(
        self, conn: psycopg.Connection[Any], run_ids: set[str], known: dict[str, bool]
    ) -> None:
        unknown = [r for r in run_ids if r not in known]
        if not unknown:
            return
        found = {
            r[0]
            for r in conn.execute("SELECT run_uuid FROM runs WHERE run_uuid = ANY(%s)", (unknown,))
        }
        for r in unknown:
            known[r] = r in found

    def _insert_series(
        self,
        conn: psycopg.Connection[Any],
        series: Sequence[tuple[str, str, array[int], array[float], array[float]]],
    ) -> list[dict[str, str]]:
        errors: list[dict[str, str]] = []
        chunks: list[tuple[Any, ...]] = []
        latest: list[tuple[Any, ...]] = []
        for run_id, key, steps, vals, ts in series:
            n = len(steps)
            if n == 0:
                continue
            i = latest_index(steps, ts)
            stamp = round(ts[i] * 1000) if math.isfinite(ts[i]) else None
            if stamp is None or not -_BIGINT <= stamp < _BIGINT:
                errors.append(
                    _malformed("log_metric", ValueError(f"timestamp {ts[i]!r} out of range"))
                )
                continue
            chunks.append(
                (
                    run_id,
                    key,
                    n,
                    min(steps),
                    max(steps),
                    block_summary(steps, vals, ts).tobytes(),
                    steps.tobytes(),
                    vals.tobytes(),
                    ts.tobytes(),
                )
            )
            value = vals[i]
            nan = math.isnan(value)
            latest.append((run_id, key, None if nan else value, stamp, steps[i], int(nan)))
        if not chunks:
            return errors
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO metric_chunks (run_uuid, key, n, min_step, max_step, summary,"
                " steps, vals, ts) VALUES (%s, %s, %s, %s, %s, %b, %b, %b, %b)",
                chunks,
            )
            cur.executemany(
                "INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step, is_nan)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (run_uuid, key) DO UPDATE SET value = excluded.value,"
                " timestamp = excluded.timestamp, step = excluded.step, is_nan = excluded.is_nan"
                " WHERE excluded.step > latest_metrics.step OR (excluded.step ="
                " latest_metrics.step AND excluded.timestamp >= latest_metrics.timestamp)",
                latest,
            )
        return errors

    def _apply_op(
        self, conn: psycopg.Connection[Any], name: str, a: dict[str, Any], known: dict[str, bool]
    ) -> None:
        apply = _APPLY.get(name)
        if apply is None:
            raise MlflowException(f"Unknown operation {name!r}", INVALID_PARAMETER_VALUE)
        if name != ops.CREATE_RUN:
            run_id = a.get("run_id")
            if not isinstance(run_id, str):
                raise _missing(f"Run '{run_id}' not found")
            self._check_runs(conn, {run_id}, known)
            if not known[run_id]:
                raise _missing(f"Run '{run_id}' not found")
        apply(self, conn, a)
        if name == ops.CREATE_RUN:
            known[a["run_id"]] = True

    def _create_run(self, conn: psycopg.Connection[Any], a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        if not isinstance(run_id, str):
            raise TypeError("run_id must be a string")
        # A retried create is harmless: the run is there, nothing changes.
        if conn.execute("SELECT 1 FROM runs WHERE run_uuid = %s", (run_id,)).fetchone():
            return
        eid = _int_id(a["experiment_id"])
        exp = conn.execute(
            "SELECT artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = %s",
            (eid,),
        ).fetchone()
        if exp is None:
            raise _missing(f"No Experiment with id={a['experiment_id']} exists")
        t = now_ms()
        if exp[1] != "active":
            raise MlflowException(
                f"The experiment {a['experiment_id']} must be in the 'active' state.", INVALID_STATE
            )
        cur = conn.execute(
            "INSERT INTO runs (run_uuid, experiment_id, run_name, user_id, status, start_time,"
            " end_time, artifact_uri, lifecycle_stage, last_heartbeat)"
            " VALUES (%s, %s, %s, %s, %s, %s, NULL, %s, 'active', %s) ON CONFLICT DO NOTHING",
            (
                run_id,
                eid,
                a.get("run_name") or "",
                a.get("user_id") or "",
                a.get("status") or "RUNNING",
                int(a.get("start_time") or t),
                f"{exp[0]}/{run_id}/artifacts",
                t if a.get("heartbeat") else None,
            ),
        )
        if cur.rowcount:
            self._upsert_tags(conn, "tags", "run_uuid", run_id, a.get("tags") or {})

    def _log_params(self, conn: psycopg.Connection[Any], a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        for k, v in a["params"].items():
            cur = conn.execute(
                "INSERT INTO params VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", (run_id, k, v)
            )
            if cur.rowcount == 0:
                row = conn.execute(
                    "SELECT value FROM params WHERE run_uuid = %s AND key = %s", (run_id, k)
                ).fetchone()
                old = row[0] if row else None
                if old != v:
                    raise MlflowException(
                        f"Changing param values is not allowed. Param with key={k!r} was "
                        f"already logged with value={old!r} for run ID={run_id!r}. "
                        f"Attempted logging new value {v!r}.",
                        INVALID_PARAMETER_VALUE,
                    )

    def _set_tags(self, conn: psycopg.Connection[Any], a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        tags = dict(a["tags"])
        self._upsert_tags(conn, "tags", "run_uuid", run_id, tags)
        if "mlflow.runName" in tags:
            conn.execute(
                "UPDATE runs SET run_name = %s WHERE run_uuid = %s",
                (tags["mlflow.runName"], run_id),
            )

    def _delete_tag(self, conn: psycopg.Connection[Any], a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        cur = conn.execute("DELETE FROM tags WHERE run_uuid = %s AND key = %s", (run_id, a["key"]))
        if cur.rowcount == 0:
            raise _missing(f"No tag with name: {a['key']} in run with id {run_id}")

    def _log_metric(self, conn: psycopg.Connection[Any], a: dict[str, Any]) -> None:
        steps = array("q", [a["step"]])
        vals = array("d", [a["value"]])
        ts = array("d", [a["timestamp"] / 1000.0])
        errors = self._insert_series(conn, [(a["run_id"], a["key"], steps, vals, ts)])
        if errors:
            raise ValueError(errors[0]["message"])

    def _heartbeat(self, conn: psycopg.Connection[Any], a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        conn.execute("UPDATE runs SET last_heartbeat = %s WHERE run_uuid = %s", (now_ms(), run_id))
        if self._clear_timeout_reason(conn, run_id):
            conn.execute(
                "UPDATE runs SET status = 'RUNNING', end_time = NULL"
                " WHERE run_uuid = %s AND status = 'FAILED'",
                (run_id,),
            )

    def _update_run(self, conn: psycopg.Connection[Any], a: dict[str, Any]) -> None:
        run_id = a["run_id"]
        status = a.get("status")
        if status is not None:
            if status not in RunStatus.ALL:
                raise MlflowException(f"Invalid run status {status!r}", INVALID_PARAMETER_VALUE)
            end_time = a.get("end_time")
            if status in ("FINISHED", "FAILED", "KILLED") and end_time is None:
                end_time = now_ms()
            conn.execute(
                "UPDATE runs SET status = %s, end_time = %s WHERE run_uuid = %s",
                (status, end_time if status != "RUNNING" else None, run_id),
            )
            self._clear_timeout_reason(conn, run_id)
            if status == "RUNNING" and a.get("heartbeat"):
                conn.execute(
                    "UPDATE runs SET last_heartbeat = %s WHERE run_uuid = %s", (now_ms(), run_id)
                )
        if a.get("run_name"):
            conn.execute(
                "UPDATE runs SET run_name = %s WHERE run_uuid = %s", (a["run_name"], run_id)
            )
            self._upsert_tags(conn, "tags", "run_uuid", run_id, {"mlflow.runName": a["run_name"]})

    @staticmethod
    def _clear_timeout_reason(conn: psycopg.Connection[Any], run_id: str) -> bool:
        cur = conn.execute(
            "DELETE FROM tags WHERE run_uuid = %s AND key = %s AND value = %s",
            (run_id, END_REASON_TAG, HEARTBEAT_TIMEOUT),
        )
        return cur.rowcount > 0

    # -- runs ------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Row:
        """A run with params, tags and latest metrics; deleted runs included, as in MLflow."""
        runs = self.get_runs([run_id])
        if not runs:
            raise _missing(f"Run '{run_id}' not found")
        return runs[0]

    def get_runs(self, run_ids: Sequence[str]) -> list[Row]:
        """Runs by id in the given order (unknown ids skipped), with params, tags, metrics."""
        if not run_ids:
            return []
        ids = list(run_ids)
        with self._read() as conn:
            out, _ = self._load_runs(conn, ids)
        return [out[i] for i in ids if i in out]

    def run_states(self, run_ids: Sequence[str]) -> list[Row]:
        """Runs' status, times and last step (the UI's live polling; see StoreAPI)."""
        if not run_ids:
            return []
        ids = list(run_ids)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {RUN_STATE_COLUMNS} FROM runs r WHERE r.run_uuid = ANY(%s)",
                (ids,),
            ).fetchall()
        found = {r[0]: run_state(r) for r in rows}
        return [found[i] for i in ids if i in found]

    @staticmethod
    def _load_runs(
        conn: psycopg.Connection[Any], ids: list[str]
    ) -> tuple[dict[str, Row], dict[tuple[str, str], tuple[int, int]]]:
        """Runs by id with their data and dataset inputs, and each latest metric's
        (timestamp, step): one query per table for the whole page, never one per run."""
        out: dict[str, Row] = {}
        for r in conn.execute(
            "SELECT run_uuid, experiment_id, run_name, user_id, status, start_time,"
            " end_time, artifact_uri, lifecycle_stage FROM runs WHERE run_uuid = ANY(%s)",
            (ids,),
        ):
            out[r[0]] = {
                "info": {
                    "run_id": r[0],
                    "run_uuid": r[0],
                    "experiment_id": str(r[1]),
                    "run_name": r[2],
                    "user_id": r[3],
                    "status": r[4],
                    "start_time": r[5],
                    "end_time": r[6],
                    "artifact_uri": r[7],
                    "lifecycle_stage": r[8],
                },
                "data": {"metrics": {}, "params": {}, "tags": {}},
            }
        for table in ("params", "tags"):
            for run_id, key, value in conn.execute(
                f"SELECT run_uuid, key, value FROM {table} WHERE run_uuid = ANY(%s)", (ids,)
            ):
                out[run_id]["data"][table][key] = value
        stamps: dict[tuple[str, str], tuple[int, int]] = {}
        for run_id, key, value, is_nan, timestamp, step in conn.execute(
            "SELECT run_uuid, key, value, is_nan, timestamp, step FROM latest_metrics"
            " WHERE run_uuid = ANY(%s)",
            (ids,),
        ):
            out[run_id]["data"]["metrics"][key] = math.nan if is_nan else value
            stamps[(run_id, key)] = (timestamp, step)
        for run_id, dataset, tags in conn.execute(
            "SELECT run_uuid, dataset_json, tags_json FROM run_inputs"
            " WHERE run_uuid = ANY(%s) ORDER BY input_id",
            (ids,),
        ):
            inputs = out[run_id].setdefault("inputs", {"dataset_inputs": []})
            inputs["dataset_inputs"].append(
                {"dataset": orjson.loads(dataset), "tags": orjson.loads(tags)}
            )
        return out, stamps

    def runs_json(
        self, run_ids: Sequence[str], artifact_uri: Callable[[str, str, str], str]
    ) -> list[str]:
        """Runs as MLflow's REST JSON text, one object each, in order; unknown ids skipped.

        PostgreSQL writes each run's ``data`` (metrics by key, params, tags) as JSON text
        itself, aggregated per run in one query: a page of 1,000 runs is a few thousand
        short rows to Python instead of one row per metric, param and tag.
        """
        if not run_ids:
            return []
        ids = list(run_ids)
        with self._read() as conn:
            rows = conn.execute(_RUNS_JSON_SQL, (ids,)).fetchall()
            inputs: dict[str, list[str]] = {}
            for run_id, dataset, tags in conn.execute(
                "SELECT run_uuid, dataset_json, tags_json FROM run_inputs"
                " WHERE run_uuid = ANY(%s) ORDER BY input_id",
                (ids,),
            ):
                # MLflow's JSON leaves an input's tags out when there are none.
                entry = f'{{"tags":{tags},' if orjson.loads(tags) else "{"
                inputs.setdefault(run_id, []).append(f'{entry}"dataset":{dataset}}}')
        by_id: dict[str, str] = {}
        for r in rows:
            run_id, eid = r[0], str(r[1])
            info: dict[str, Any] = {
                "run_id": run_id,
                "run_uuid": run_id,
                "experiment_id": eid,
                "run_name": r[2],
                "user_id": r[3],
                "status": r[4],
                "start_time": r[5],
                "end_time": r[6],
                "artifact_uri": artifact_uri(eid, run_id, r[7]),
                "lifecycle_stage": r[8],
            }
            if info["end_time"] is None:
                del info["end_time"]
            text = '{"info":' + orjson.dumps(info).decode() + ',"data":' + r[9]
            if run_id in inputs:
                text += ',"inputs":{"dataset_inputs":[' + ",".join(inputs[run_id]) + "]}"
            by_id[run_id] = text + "}"
        return [by_id[i] for i in ids if i in by_id]

    def run_exists(self, run_id: str) -> bool:
        """Whether a run with this id exists (whatever its stage)."""
        with self._read() as conn:
            row = conn.execute("SELECT 1 FROM runs WHERE run_uuid = %s", (run_id,)).fetchone()
        return row is not None

    def run_artifact_location(self, run_id: str) -> tuple[str, str]:
        """(experiment id, artifact URI) of a run."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT experiment_id, artifact_uri FROM runs WHERE run_uuid = %s", (run_id,)
            ).fetchone()
        if row is None:
            raise _missing(f"Run with id={run_id} not found")
        return str(row[0]), str(row[1])

    def _set_run_stage(self, run_id: str, stage: str) -> None:
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE runs SET lifecycle_stage = %s, deleted_time = %s WHERE run_uuid = %s",
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

    def _require_active_run(self, conn: psycopg.Connection[Any], run_id: str) -> None:
        row = conn.execute(
            "SELECT lifecycle_stage FROM runs WHERE run_uuid = %s", (run_id,)
        ).fetchone()
        if row is None:
            raise _missing(f"Run with id={run_id} not found")
        if row[0] != "active":
            raise MlflowException(
                f"The run {run_id} must be in the 'active' state. Current state is {row[0]}.",
                INVALID_PARAMETER_VALUE,
            )

    def write_run(self, run_id: str, ops: Sequence[Op], series: Sequence[RunSeries] = ()) -> None:
        """Apply ops and series to one active run atomically: the first failure raises."""
        with self._transaction() as conn:
            self._require_active_run(conn, run_id)
            known = {run_id: True}
            for name, args in ops:
                self._apply_op(conn, name, {**args, "run_id": run_id}, known)
            errors = self._insert_series(conn, [(run_id, *s) for s in series])
            if errors:
                raise MlflowException(errors[0]["message"], INVALID_PARAMETER_VALUE)

    def log_inputs(self, run_id: str, inputs: Sequence[tuple[str, str, str, str]]) -> None:
        """Record (name, digest, dataset JSON, tags JSON) dataset inputs of an active run."""
        with self._transaction() as conn:
            self._require_active_run(conn, run_id)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO run_inputs (run_uuid, dataset_name, dataset_digest,"
                    " dataset_json, tags_json) VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    [(run_id, *i) for i in inputs],
                )

    def search_datasets(
        self, experiment_ids: Sequence[str]
    ) -> list[tuple[str, str, str, str | None]]:
        """(experiment id, name, digest, context) of datasets logged to the experiments'
        runs, each once, at most 1,000; the context is the ``mlflow.data.context`` tag."""
        ids = [int(e) for e in experiment_ids if e.isascii() and e.isdigit() and len(e) < 19]
        if not ids:
            return []
        with self._read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT r.experiment_id, i.dataset_name, i.dataset_digest,"
                " (SELECT t ->> 'value' FROM jsonb_array_elements(i.tags_json::jsonb) AS t"
                "  WHERE t ->> 'key' = 'mlflow.data.context' LIMIT 1)"
                " FROM run_inputs AS i JOIN runs AS r ON r.run_uuid = i.run_uuid"
                " WHERE r.experiment_id = ANY(%s)"
                " ORDER BY r.experiment_id, i.dataset_name, i.dataset_digest LIMIT 1000",
                (ids,),
            ).fetchall()
        return [(str(r[0]), r[1], r[2], r[3]) for r in rows]

    # -- metrics ---------------------------------------------------------------------------

    def metric_chunks(self, run_id: str, key: str) -> list[tuple[bytes, bytes, bytes]]:
        """The packed (steps, values, timestamps) chunks of one series, in logged order."""
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_uuid = %s", (run_id,)).fetchone() is None:
                raise _missing(f"Run '{run_id}' not found")
            # Binary results: bytea arrives as bytes, not as hex text to decode.
            with conn.cursor(binary=True) as cur:
                rows = cur.execute(
                    "SELECT steps, vals, ts FROM metric_chunks WHERE run_uuid = %s AND key = %s"
                    " ORDER BY chunk_id",
                    (run_id, key),
                ).fetchall()
        return [(bytes(s), bytes(v), bytes(t)) for s, v, t in rows]

    def metric_history(self, run_id: str, key: str) -> Points:
        """A whole series as (steps, values, timestamps in seconds) arrays."""
        steps, vals, ts = array("q"), array("d"), array("d")
        for s, v, t in self.metric_chunks(run_id, key):
            steps.frombytes(s)
            vals.frombytes(v)
            ts.frombytes(t)
        return steps, vals, ts

    def series_extent(self, run_id: str, key: str) -> tuple[int, int, int]:
        """(points, smallest step, largest step) of a series; (0, 0, 0) when it is empty."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(n), 0), COALESCE(MIN(min_step), 0),"
                " COALESCE(MAX(max_step), 0) FROM metric_chunks WHERE run_uuid = %s AND key = %s",
                (run_id, key),
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def block_summaries(self, run_id: str, key: str) -> array[float]:
        """The series' block summaries (collector.downsample), concatenated in order."""
        summary = array("d")
        with self._read() as conn, conn.cursor(binary=True) as cur:
            for (blob,) in cur.execute(
                "SELECT summary FROM metric_chunks WHERE run_uuid = %s AND key = %s"
                " ORDER BY chunk_id",
                (run_id, key),
            ):
                summary.frombytes(blob)
        return summary

    def sampled_series(self, run_id: str, key: str, max_points: int) -> Points:
        """At most ``max_points`` points of a series, its shape kept (collector.downsample)."""
        return downsample.sampled_series(self, run_id, key, max_points)

    # -- reads of the web UI ---------------------------------------------------------------

    def experiment_summaries(self) -> list[Row]:
        """Every experiment with its tags, run count and last activity (epoch ms)."""
        out: dict[int, Row] = {}
        with self._read() as conn:
            for r in conn.execute(
                "SELECT e.experiment_id, e.name, e.lifecycle_stage, e.creation_time,"
                " e.last_update_time,"
                " (SELECT COUNT(*) FROM runs r WHERE r.experiment_id = e.experiment_id"
                "   AND r.lifecycle_stage = 'active'),"
                " (SELECT MAX(GREATEST(r.start_time, COALESCE(r.end_time, 0),"
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
            for eid, key, value in conn.execute(
                "SELECT experiment_id, key, value FROM experiment_tags"
            ):
                if eid in out:
                    out[eid]["tags"][key] = value
        return list(out.values())

    def experiment_columns(self, experiment_id: str) -> dict[str, list[str]]:
        """The param, metric and tag keys that the experiment's runs use, sorted."""
        eid = _int_id(experiment_id)
        out: dict[str, list[str]] = {}
        with self._read() as conn:
            for field, table in (
                ("params", "params"),
                ("metrics", "latest_metrics"),
                ("tags", "tags"),
            ):
                out[field] = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT DISTINCT t.key FROM {table} t JOIN runs r"
                        " ON r.run_uuid = t.run_uuid WHERE r.experiment_id = %s ORDER BY t.key",
                        (eid,),
                    )
                ]
        return out

    def child_run_ids(self, run_id: str) -> list[str]:
        """Runs whose ``mlflow.parentRunId`` tag names this run."""
        with self._read() as conn:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = %s",
                    (run_id,),
                )
            ]

    def metric_series_info(self, run_id: str) -> list[Row]:
        """Each metric key of a run with its point count and step range."""
        with self._read() as conn:
            return [
                {"key": r[0], "points": int(r[1]), "min_step": r[2], "max_step": r[3]}
                for r in conn.execute(
                    "SELECT key, SUM(n), MIN(min_step), MAX(max_step) FROM metric_chunks"
                    " WHERE run_uuid = %s GROUP BY key ORDER BY key",
                    (run_id,),
                )
            ]

    def metric_extremes(self, experiment_id: str, key: str) -> dict[str, tuple[float, float]]:
        """Each run's smallest and largest value of one metric (NaN ignored), from the
        chunks' block summaries, or from the values of chunks that hold NaN."""
        from flightlog.collector.downsample import extremes, summary_extremes

        found: dict[str, list[float]] = {}
        with self._read() as conn, conn.cursor(binary=True) as cur:
            rows = cur.execute(
                "SELECT c.chunk_id, c.run_uuid, c.summary FROM runs r JOIN metric_chunks c"
                " ON c.run_uuid = r.run_uuid AND c.key = %s WHERE r.experiment_id = %s",
                (key, _int_id(experiment_id)),
            ).fetchall()
            for chunk_id, run_id, blob in rows:
                got = summary_extremes(bytes(blob))
                if got is None:
                    vals = array("d")
                    row = cur.execute(
                        "SELECT vals FROM metric_chunks WHERE chunk_id = %s", (chunk_id,)
                    ).fetchone()
                    assert row is not None
                    vals.frombytes(row[0])
                    got = extremes(vals)
                now = found.setdefault(run_id, [math.nan, math.nan])
                now[0], now[1] = extremes((now[0], got[0]))[0], extremes((now[1], got[1]))[1]
        return {r: (v[0], v[1]) for r, v in found.items()}

    def metric_values_at_step(
        self, experiment_id: str, key: str, step: int
    ) -> dict[str, tuple[int, float]]:
        """Per run: (step, value) of its point with the largest step <= ``step``."""
        from flightlog.collector.step_values import values_at_step

        with self._read() as conn:
            spans = conn.execute(
                "SELECT c.chunk_id, c.run_uuid, c.min_step, c.max_step FROM runs r"
                " JOIN metric_chunks c ON c.run_uuid = r.run_uuid AND c.key = %s"
                " WHERE r.experiment_id = %s AND c.min_step <= %s",
                (key, _int_id(experiment_id), step),
            ).fetchall()
        return values_at_step(spans, lambda ids: self.metric_chunk_data(ids, summaries=False), step)

    def metric_chunk_spans(
        self, run_id: str, key: str, min_step: int | None, max_step: int | None
    ) -> list[tuple[int, int, int, int]]:
        """(chunk_id, points, min_step, max_step) of the chunks overlapping a step range."""
        lo = min_step if min_step is not None else -(2**63)
        hi = max_step if max_step is not None else 2**63 - 1
        with self._read() as conn:
            return [
                (r[0], r[1], r[2], r[3])
                for r in conn.execute(
                    "SELECT chunk_id, n, min_step, max_step FROM metric_chunks"
                    " WHERE run_uuid = %s AND key = %s AND max_step >= %s AND min_step <= %s"
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
        """(run_id, key) -> the spans of that series' chunks that overlap a step range."""
        lo = min_step if min_step is not None else -(2**63)
        hi = max_step if max_step is not None else 2**63 - 1
        out: dict[tuple[str, str], list[tuple[int, int, int, int]]] = {}
        with self._read() as conn:
            for r in conn.execute(
                "SELECT run_uuid, key, chunk_id, n, min_step, max_step FROM metric_chunks"
                " WHERE run_uuid = ANY(%s) AND key = ANY(%s) AND max_step >= %s"
                " AND min_step <= %s ORDER BY chunk_id",
                (list(run_ids), list(keys), lo, hi),
            ):
                out.setdefault((r[0], r[1]), []).append((r[2], r[3], r[4], r[5]))
        return out

    def metric_chunk_data(
        self, chunk_ids: Sequence[int], *, summaries: bool
    ) -> dict[int, tuple[bytes, ...]]:
        """Chunks by id: their block summary, or their packed steps, values, timestamps."""
        columns = "summary" if summaries else "steps, vals, ts"
        with self._read() as conn, conn.cursor(binary=True) as cur:
            return {
                r[0]: tuple(bytes(b) for b in r[1:])
                for r in cur.execute(
                    f"SELECT chunk_id, {columns} FROM metric_chunks WHERE chunk_id = ANY(%s)",
                    (list(chunk_ids),),
                )
            }

    # -- search ----------------------------------------------------------------------------

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
        with self._read() as conn:
            return search_run_ids(
                conn,
                experiment_ids,
                filter_string,
                run_view_type,
                max_results,
                order_by,
                page_token,
                POSTGRES,
            )

    def search_experiments(
        self,
        view_type: int,
        max_results: int,
        filter_string: str | None,
        order_by: Sequence[str] | None,
        page_token: str | None,
    ) -> tuple[list[Row], str | None]:
        """One page of experiments matching a filter, in order, and the next page's token."""
        with self._read() as conn:
            ids, token = search_experiment_ids(
                conn, view_type, max_results, filter_string, order_by, page_token, POSTGRES
            )
        return self.list_experiments(ids), token

    # -- upkeep ----------------------------------------------------------------------------

    def prune_batch_ids(self, older_than_ms: int) -> int:
        """Forget the ids of batches received before the given time; return how many."""
        with self._transaction() as conn:
            cur = conn.execute("DELETE FROM batches WHERE received_at < %s", (older_than_ms,))
            return int(cur.rowcount)

    def fail_stale_runs(self, older_than_ms: int) -> list[str]:
        """Mark FAILED the RUNNING runs whose last heartbeat is older than the given time.

        One UPDATE ... RETURNING: two collectors watching the same database never both
        fail the same run.
        """
        with self._transaction() as conn:
            t = now_ms()
            ids = [
                r[0]
                for r in conn.execute(
                    "UPDATE runs SET status = 'FAILED', end_time = %s WHERE status = 'RUNNING'"
                    " AND last_heartbeat IS NOT NULL AND last_heartbeat < %s RETURNING run_uuid",
                    (t, older_than_ms),
                )
            ]
            for run_id in ids:
                self._upsert_tags(
                    conn, "tags", "run_uuid", run_id, {END_REASON_TAG: HEARTBEAT_TIMEOUT}
                )
        return ids


# Each run's row and its ``data`` as MLflow's JSON, built by PostgreSQL. Absent parts
# are left out (json_agg of no rows is NULL, which json_strip_nulls drops), metrics by
# key (COLLATE "C": code point order, as Python's sorted()). NaN is stored as is_nan,
# and to_json writes infinities as the strings "Infinity" and "-Infinity", protobuf's
# JSON spelling. Doubles are written exactly: each connection sets extra_float_digits.
_RUNS_JSON_SQL = """
SELECT r.run_uuid, r.experiment_id, r.run_name, r.user_id, r.status, r.start_time,
    r.end_time, r.artifact_uri, r.lifecycle_stage,
    json_strip_nulls(json_build_object(
        'metrics', (SELECT json_agg(json_build_object('key', m.key,
                'timestamp', m.timestamp, 'step', m.step,
                'value', CASE WHEN m.is_nan = 1 THEN to_json('NaN'::text)
                    ELSE to_json(m.value) END) ORDER BY m.key)
            FROM latest_metrics m WHERE m.run_uuid = r.run_uuid),
        'params', (SELECT json_agg(json_build_object('key', p.key, 'value', p.value)
                ORDER BY p.key)
            FROM params p WHERE p.run_uuid = r.run_uuid),
        'tags', (SELECT json_agg(json_build_object('key', t.key, 'value', t.value)
                ORDER BY t.key)
            FROM tags t WHERE t.run_uuid = r.run_uuid)
    ))::text
FROM runs r WHERE r.run_uuid = ANY(%s)
"""


_APPLY: dict[str, Callable[[PostgresStore, psycopg.Connection[Any], dict[str, Any]], None]] = {
    ops.CREATE_RUN: PostgresStore._create_run,
    ops.LOG_PARAMS: PostgresStore._log_params,
    ops.SET_TAGS: PostgresStore._set_tags,
    ops.DELETE_TAG: PostgresStore._delete_tag,
    ops.UPDATE_RUN: PostgresStore._update_run,
    ops.LOG_METRIC: PostgresStore._log_metric,
    ops.HEARTBEAT: PostgresStore._heartbeat,
}
