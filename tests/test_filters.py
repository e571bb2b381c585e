"""The search filter language, its SQL compilation and the SQLite search functions.

The property tests build random runs (and experiments) into a real SQLite file made from
schema.sql and search_indexes.sql, generate random filter ASTs, render each as text in
one of the many spellings the language accepts, and check that

- parsing the text gives back the AST (the parser round-trips every spelling), and
- search_run_ids / search_experiment_ids return exactly the entities the pure-Python
  reference evaluator accepts, in the order an independent Python sort gives, both in
  one page and walked page by page with the page tokens.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import sqlite3
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flightlog.collector.filters import (
    EXPERIMENT_ATTRIBUTES,
    MAX_CONDITIONS,
    MAX_NESTING,
    POSTGRES,
    RUN_ATTRIBUTES,
    SQLITE,
    And,
    Compare,
    Dialect,
    Entity,
    ExperimentRecord,
    Expr,
    InList,
    IsNull,
    Key,
    Like,
    Or,
    OrderKey,
    RunRecord,
    Target,
    compile_filter,
    evaluate_experiment,
    evaluate_run,
    like_matches,
    like_to_glob,
    parse_filter,
    parse_order_by,
    register_sql_functions,
)
from flightlog.collector.search import (
    ACTIVE_ONLY,
    ALL,
    DELETED_ONLY,
    search_experiment_ids,
    search_run_ids,
)
from flightlog.core.exceptions import FilterError, MlflowException

# ---------------------------------------------------------------------------------------
# Store helpers
# ---------------------------------------------------------------------------------------


def _open_store(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    sql_dir = resources.files("flightlog.collector")
    conn.executescript(sql_dir.joinpath("schema.sql").read_text())
    conn.executescript(sql_dir.joinpath("search_indexes.sql").read_text())
    return conn


def _clear(conn: sqlite3.Connection) -> None:
    for table in ("latest_metrics", "params", "tags", "runs", "experiment_tags", "experiments"):
        conn.execute(f"DELETE FROM {table}")


def _insert_experiment(conn: sqlite3.Connection, exp: ExperimentRecord) -> None:
    conn.execute(
        "INSERT INTO experiments VALUES (?, ?, ?, ?, ?, ?)",
        (
            int(exp["experiment_id"]),
            exp["name"],
            "/artifacts",
            exp["lifecycle_stage"],
            exp["creation_time"],
            exp["last_update_time"],
        ),
    )
    conn.executemany(
        "INSERT INTO experiment_tags VALUES (?, ?, ?)",
        [(int(exp["experiment_id"]), k, v) for k, v in exp["tags"].items()],
    )


def _insert_run(conn: sqlite3.Connection, run: RunRecord, experiment_id: int) -> None:
    conn.execute(
        "INSERT INTO runs (run_uuid, experiment_id, run_name, user_id, status, start_time,"
        " end_time, artifact_uri, lifecycle_stage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run["run_id"],
            experiment_id,
            run["run_name"],
            run["user_id"],
            run["status"],
            run["start_time"],
            run["end_time"],
            run["artifact_uri"],
            run["lifecycle_stage"],
        ),
    )
    conn.executemany(
        "INSERT INTO params VALUES (?, ?, ?)",
        [(run["run_id"], k, v) for k, v in run["params"].items()],
    )
    conn.executemany(
        "INSERT INTO tags VALUES (?, ?, ?)", [(run["run_id"], k, v) for k, v in run["tags"].items()]
    )
    conn.executemany(
        "INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step, is_nan)"
        " VALUES (?, ?, ?, 0, 0, ?)",
        [
            # The store's convention: NaN is value NULL with is_nan = 1.
            (run["run_id"], k, None if math.isnan(v) else v, int(math.isnan(v)))
            for k, v in run["metrics"].items()
        ],
    )


def _run(
    i: int,
    *,
    start_time: int = 1,
    end_time: int | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    run_name: str = "",
    status: str = "FINISHED",
    lifecycle_stage: str = "active",
) -> RunRecord:
    return RunRecord(
        run_id=hashlib.md5(f"run{i}".encode()).hexdigest(),
        run_name=run_name,
        status=status,
        user_id="alice",
        start_time=start_time,
        end_time=end_time,
        artifact_uri=f"/artifacts/{i}",
        lifecycle_stage=lifecycle_stage,
        metrics=metrics or {},
        params=params or {},
        tags=tags or {},
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = _open_store(tmp_path / "store.db")
    yield conn
    conn.close()


class SearchDb:
    """A store database the property tests fill and search: SQLite or PostgreSQL.

    ``conn`` takes the helpers' ``?`` SQL on either (PostgreSQL's is wrapped to use
    ``%s``) and works as a ``with`` block committing the refill; ``dialect`` is what
    search compiles to.
    """

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect

    def search_runs(self, *args: Any) -> tuple[list[str], str | None]:
        return search_run_ids(self.conn.raw, *args, self.dialect)

    def search_experiments(self, *args: Any) -> tuple[list[str], str | None]:
        return search_experiment_ids(self.conn.raw, *args, self.dialect)


class _SqliteConn:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        return self.raw.executemany(sql, rows)

    def __enter__(self) -> _SqliteConn:
        self.raw.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.raw.__exit__(*exc)


class _PgConn:
    """An autocommit psycopg connection taking ``?`` placeholders."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    @staticmethod
    def _check(params: Any) -> None:
        # PostgreSQL text cannot hold NUL; the SQLite store can. Not a search question.
        if any(isinstance(p, str) and "\x00" in p for p in params):
            assume(False)

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._check(params)
        return self.raw.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        for row in rows:
            self._check(row)
        with self.raw.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)

    def __enter__(self) -> _PgConn:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SearchDb]:
    # One database for all hypothesis examples: each example clears and refills it,
    # which is much faster than creating a database per example.
    if request.param == "sqlite":
        conn = _open_store(tmp_path_factory.mktemp("search") / "store.db")
        yield SearchDb(_SqliteConn(conn), SQLITE)
        conn.close()
        return
    import psycopg

    from flightlog.collector.pgstore import PostgresStore

    uri = request.getfixturevalue("pg_server").create_database()
    PostgresStore(uri, "/artifacts").close()  # migrates the new database
    with psycopg.connect(uri, autocommit=True) as pg:
        # The helpers insert runs of experiments they never create, as SQLite (foreign
        # keys off) lets them.
        pg.execute("ALTER TABLE runs DROP CONSTRAINT runs_experiment_id_fkey")
        yield SearchDb(_PgConn(pg), POSTGRES)


def _all_pages(fetch: Callable[[str | None], tuple[list[str], str | None]]) -> list[str]:
    ids: list[str] = []
    token: str | None = None
    for _ in range(1000):
        page, token = fetch(token)
        ids.extend(page)
        if token is None:
            return ids
    raise AssertionError("pagination did not terminate")


# ---------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------

ACC = Key(Entity.METRIC, "accuracy", True)
MODEL = Key(Entity.PARAM, "model_type", False)
TEAM = Key(Entity.TAG, "team", False)


def _attr(name: str, target: Target = "runs") -> Key:
    attrs = RUN_ATTRIBUTES if target == "runs" else EXPERIMENT_ATTRIBUTES
    return Key(Entity.ATTRIBUTE, name, attrs[name])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "metrics.accuracy > 0.9 AND params.model_type = 'RandomForest'",
            And((Compare(ACC, ">", 0.9), Compare(MODEL, "=", "RandomForest"))),
        ),
        (
            "tags.team = 'ml' OR tags.team = 'ds'",
            Or((Compare(TEAM, "=", "ml"), Compare(TEAM, "=", "ds"))),
        ),
        # AND binds tighter than OR; parentheses override; keywords in any case.
        (
            "tags.team = 'a' or tags.team = 'b' and metrics.accuracy < 1",
            Or(
                (
                    Compare(TEAM, "=", "a"),
                    And((Compare(TEAM, "=", "b"), Compare(ACC, "<", 1))),
                )
            ),
        ),
        (
            "(tags.team = 'a' Or tags.team = 'b') aNd metrics.accuracy < 1",
            And(
                (
                    Or((Compare(TEAM, "=", "a"), Compare(TEAM, "=", "b"))),
                    Compare(ACC, "<", 1),
                )
            ),
        ),
        ("((metrics.accuracy >= -1.5e-3))", Compare(ACC, ">=", -0.0015)),
        ("metric.accuracy <> 3", Compare(ACC, "!=", 3)),
        ("metrics.accuracy<=.5", Compare(ACC, "<=", 0.5)),
        ('params.model_type != "it\'s"', Compare(MODEL, "!=", "it's")),
        ("param.model_type = 'it''s'", Compare(MODEL, "=", "it's")),
        ("parameters.model_type LIKE 'Random%'", Like(MODEL, "Random%", True)),
        ("params.model_type ilike '%forest'", Like(MODEL, "%forest", False)),
        ("params.`model_type` IN ('a', \"b\")", InList(MODEL, ("a", "b"), False)),
        ("params.\"model_type\" not in ('a')", InList(MODEL, ("a",), True)),
        ("metrics.accuracy IN (1, 2.5)", InList(ACC, (1, 2.5), False)),
        ("tags.team IS NULL", IsNull(TEAM, False)),
        ("tag.team is not null", IsNull(TEAM, True)),
        ("tags.mlflow.runName = 'x'", Compare(Key(Entity.TAG, "mlflow.runName", False), "=", "x")),
        ("tags.`my key-1` = 'x'", Compare(Key(Entity.TAG, "my key-1", False), "=", "x")),
        ("tags.\"a.b c\" = 'x'", Compare(Key(Entity.TAG, "a.b c", False), "=", "x")),
        ("tags.`a``b` = 'x'", Compare(Key(Entity.TAG, "a`b", False), "=", "x")),
        ("metrics.准确率 > 0.5", Compare(Key(Entity.METRIC, "准确率", True), ">", 0.5)),
        ("`metrics`.accuracy = 1", Compare(ACC, "=", 1)),
        ("status = 'RUNNING'", Compare(_attr("status"), "=", "RUNNING")),
        ("attributes.status = 'RUNNING'", Compare(_attr("status"), "=", "RUNNING")),
        ("attr.run_id IN ('a', 'b')", InList(_attr("run_id"), ("a", "b"), False)),
        ("run.start_time > 5", Compare(_attr("start_time"), ">", 5)),
        ("attribute.end_time IS NULL", IsNull(_attr("end_time"), False)),
        ("created >= 10", Compare(_attr("start_time"), ">=", 10)),
        ("`Run name` LIKE 'fold-%'", Like(_attr("run_name"), "fold-%", True)),
        ("\"run name\" = 'a'", Compare(_attr("run_name"), "=", "a")),
        (
            "user_id = 'me' AND artifact_uri LIKE 's3://%'",
            And(
                (
                    Compare(_attr("user_id"), "=", "me"),
                    Like(_attr("artifact_uri"), "s3://%", True),
                )
            ),
        ),
        ("lifecycle_stage = 'deleted'", Compare(_attr("lifecycle_stage"), "=", "deleted")),
        ("params.x LIKE'a'", Like(Key(Entity.PARAM, "x", False), "a", True)),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_runs(text: str, expected: Expr | None) -> None:
    assert parse_filter(text, "runs") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tags.project = 'customer-churn'",
            Compare(Key(Entity.TAG, "project", False), "=", "customer-churn"),
        ),
        (
            "name LIKE 'customer-churn/%'",
            Like(_attr("name", "experiments"), "customer-churn/%", True),
        ),
        ("attributes.name = 'x'", Compare(_attr("name", "experiments"), "=", "x")),
        (
            "experiment_id IN ('1', '2')",
            InList(_attr("experiment_id", "experiments"), ("1", "2"), False),
        ),
        ("creation_time > 5", Compare(_attr("creation_time", "experiments"), ">", 5)),
        (
            "last_update_time <= 5 OR lifecycle_stage = 'deleted'",
            Or(
                (
                    Compare(_attr("last_update_time", "experiments"), "<=", 5),
                    Compare(_attr("lifecycle_stage", "experiments"), "=", "deleted"),
                )
            ),
        ),
    ],
)
def test_parse_experiments(text: str, expected: Expr) -> None:
    assert parse_filter(text, "experiments") == expected


def test_key_positions_and_sources_are_recorded() -> None:
    expr = parse_filter("metrics.a > 1 AND  tags.`b c` = 'x'")
    assert isinstance(expr, And)
    first, second = expr.operands
    assert isinstance(first, Compare) and isinstance(second, Compare)
    assert (first.key.position, first.key.source) == (0, "metrics.a")
    assert (second.key.position, second.key.source) == (19, "tags.`b c`")


# ---------------------------------------------------------------------------------------
# Errors: each with the message a user sees and the 0-based position it names
# ---------------------------------------------------------------------------------------

RUN_ATTRS_LISTED = (
    "run_id, run_name, status, user_id, start_time, end_time, artifact_uri, lifecycle_stage"
)
OPS_HELP = "use one of = != < <= > >= LIKE ILIKE IN NOT IN IS NULL IS NOT NULL"

RUN_FILTER_ERRORS = [
    # Type errors
    (
        "metrics.accuracy > 'high'",
        "metrics.accuracy is a number; compare it with a number, not the string 'high'",
        19,
    ),
    (
        "metrics.accuracy LIKE '9%'",
        "LIKE matches strings, but metrics.accuracy is a number; use = != < <= > >= IN or NOT IN",
        17,
    ),
    (
        "start_time ILIKE '1%'",
        "ILIKE matches strings, but start_time is a number; use = != < <= > >= IN or NOT IN",
        11,
    ),
    (
        "params.lr > 0.1",
        "'>' compares numbers, but params.lr is a string; use = != LIKE ILIKE IN or NOT IN",
        10,
    ),
    ("params.lr = 0.01", "params.lr is a string; quote the value: params.lr = '0.01'", 12),
    ("tags.team IN ('a', 2)", "tags.team is a string; quote the value: tags.team = '2'", 19),
    (
        "metrics.m IN (1, '2')",
        "metrics.m is a number; compare it with a number, not the string '2'",
        17,
    ),
    (
        "attributes.status > 'A'",
        "'>' compares numbers, but attributes.status is a string; use = != LIKE ILIKE IN or NOT IN",
        18,
    ),
    # Unknown prefix, attribute, operator
    (
        "metricz.accuracy > 1",
        "Unknown prefix 'metricz'; use metrics, params, tags or attributes (e.g. metrics.accuracy)",
        0,
    ),
    (
        "accuracy > 0.9",
        f"Unknown attribute 'accuracy'. Runs have the attributes {RUN_ATTRS_LISTED}; a metric, "
        "param or tag needs a prefix: metrics.accuracy, params.accuracy or tags.accuracy",
        0,
    ),
    (
        "attributes.color = 'red'",
        f"Unknown attribute 'color'. Runs have the attributes {RUN_ATTRS_LISTED}; a metric, "
        "param or tag needs a prefix: metrics.color, params.color or tags.color",
        0,
    ),
    ("metrics = 1", "'metrics' needs a key after it, e.g. metrics.my_key", 0),
    ("metrics.accuracy == 0.9", f"Unknown operator '=='; {OPS_HELP}", 17),
    ("metrics.accuracy => 0.9", f"Unknown operator '=>'; {OPS_HELP}", 17),
    ("metrics.accuracy ~ 0.9", f"Unknown operator '~'; {OPS_HELP}", 17),
    ("metrics.accuracy BETWEEN 1 AND 2", f"Unknown operator 'BETWEEN'; {OPS_HELP}", 17),
    ("params.x NOT LIKE 'a%'", f"Unknown operator 'NOT LIKE'; {OPS_HELP}", 9),
    ("params.x CONTAINS 'a'", f"Unknown operator 'CONTAINS'; {OPS_HELP}", 9),
    (
        "params.x",
        f"Expected an operator after params.x, found the end of the filter; {OPS_HELP}",
        8,
    ),
    # Quotes
    ("params.model = 'RandomForest", "Unclosed string: the ' here is never closed", 15),
    ('params.model = "RandomForest', 'Unclosed string: the " here is never closed', 15),
    ("params.`model = 'x'", "Unclosed quoted key: the ` here is never closed", 7),
    (
        "'RandomForest' = params.model",
        "Expected a key such as metrics.accuracy, found a string; string values go on the "
        "right of the operator",
        0,
    ),
    (
        "status = RUNNING",
        "Expected a value after '=', found 'RUNNING'; strings need quotes, e.g. 'RUNNING'",
        9,
    ),
    (
        "metrics.a > high",
        "Expected a value after '>', found 'high'; compare metrics.a with a number",
        12,
    ),
    (
        "params.a = NULL",
        "Expected a value after '=', found 'NULL'; test for a missing value with params.a IS NULL",
        11,
    ),
    # Keys
    (
        "metrics.val-loss < 1",
        "Unexpected character '-' in a key; quote keys that contain it with backticks, "
        "e.g. metrics.`val-loss`",
        11,
    ),
    (
        "metrics. loss < 1",
        "Expected a key after '.'; quote keys with spaces or symbols: tags.`my key`",
        8,
    ),
    ("tags.a.`b` = 'x'", "Quote the whole key after the prefix, e.g. tags.`my.key`", 0),
    # Structure
    (
        "metrics.a > 1 params.b = 'x'",
        "Unexpected 'params.b' after a complete condition; join conditions with AND or OR",
        14,
    ),
    (
        "metrics.a > 1 AND",
        "Expected a condition such as metrics.accuracy > 0.9 after AND, found the end of "
        "the filter",
        17,
    ),
    (
        "metrics.a > 1 OR OR metrics.b > 1",
        "Expected a condition such as metrics.accuracy > 0.9 after OR, found 'OR'",
        17,
    ),
    ("(metrics.a > 1 OR metrics.b > 1", "Unclosed '(': no ')' matches it", 0),
    ("metrics.a > 1)", "Unexpected ')' with no matching '('", 13),
    (
        "(metrics.a > 1 metrics.b > 1)",
        "Expected AND, OR or ')' but found 'metrics.b'",
        15,
    ),
    ("()", "Expected a condition such as metrics.accuracy > 0.9, found ')'", 1),
    ("metrics.a IN ()", "IN needs at least one value", 14),
    ("metrics.a IN (1, 2", "Unclosed '(' of an IN list: no ')' matches it", 13),
    ("metrics.a IN (1 2)", "Expected ',' or ')' but found '2'", 16),
    (
        "metrics.a IN 1",
        "Expected '(' after IN, found '1'; write a list like ('a', 'b')",
        13,
    ),
    ("metrics.a IS 1", "Expected NULL or NOT NULL after IS, found '1'", 13),
    ("metrics.a IS NOT 1", "Expected NULL after IS, found '1'", 17),
    ("metrics.a NOT 1", "Expected IN after NOT, found '1'", 14),
    ("metrics.a > 1.2.3", "Invalid number '1.2.3'", 12),
    ("metrics.a > 12abc", "Invalid number '12abc'", 12),
    ("metrics.a > 1;", "Unexpected character ';'", 13),
    (
        "params.p LIKE 'ab\\'",
        "A LIKE pattern cannot end with a lone backslash; write \\\\ for a backslash",
        14,
    ),
]


@pytest.mark.parametrize(("text", "message", "position"), RUN_FILTER_ERRORS)
def test_run_filter_errors(text: str, message: str, position: int) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text, "runs")
    # What the user sees is FilterError's rendering of (message, position, text).
    assert str(info.value) == str(FilterError(message, position, text))
    assert info.value.position == position
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"


EXPERIMENT_FILTER_ERRORS = [
    (
        "metrics.accuracy > 1",
        "Experiments have no metrics; filter on name, experiment_id, creation_time, "
        "last_update_time, lifecycle_stage or tags.<key>",
        0,
    ),
    (
        "params.x = 'a'",
        "Experiments have no params; filter on name, experiment_id, creation_time, "
        "last_update_time, lifecycle_stage or tags.<key>",
        0,
    ),
    (
        "project = 'x'",
        "Unknown attribute 'project'. Experiments have the attributes name, experiment_id, "
        "creation_time, last_update_time, lifecycle_stage; a tag needs a prefix: tags.project",
        0,
    ),
    (
        "start_time > 1",
        "Unknown attribute 'start_time'. Experiments have the attributes name, experiment_id, "
        "creation_time, last_update_time, lifecycle_stage; a tag needs a prefix: tags.start_time",
        0,
    ),
    (
        "foo.x = 'a'",
        "Unknown prefix 'foo'; use tags or attributes (e.g. tags.project)",
        0,
    ),
    (
        "experiment_id = 3",
        "experiment_id is a string; quote the value: experiment_id = '3'",
        16,
    ),
    (
        "name > 'a'",
        "'>' compares numbers, but name is a string; use = != LIKE ILIKE IN or NOT IN",
        5,
    ),
    (
        "creation_time LIKE '1%'",
        "LIKE matches strings, but creation_time is a number; use = != < <= > >= IN or NOT IN",
        14,
    ),
]


@pytest.mark.parametrize(("text", "message", "position"), EXPERIMENT_FILTER_ERRORS)
def test_experiment_filter_errors(text: str, message: str, position: int) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text, "experiments")
    assert str(info.value) == str(FilterError(message, position, text))
    assert info.value.position == position


def test_error_message_shows_the_filter_and_position() -> None:
    with pytest.raises(FilterError) as info:
        parse_filter("metrics.accuracy > 'high'")
    shown = str(info.value)
    assert "metrics.accuracy is a number" in shown
    assert "position 19" in shown
    assert "metrics.accuracy > 'high'" in shown


# ---------------------------------------------------------------------------------------
# order_by
# ---------------------------------------------------------------------------------------


def test_parse_order_by() -> None:
    assert parse_order_by(
        [
            "metrics.accuracy DESC",
            "attributes.start_time",
            "params.lr ASC",
            "tags.`my key` desc",
            'tag."a.b"',
            "`Run name` asc",
            "end_time",
        ]
    ) == [
        OrderKey(Entity.METRIC, "accuracy", False),
        OrderKey(Entity.ATTRIBUTE, "start_time", True),
        OrderKey(Entity.PARAM, "lr", True),
        OrderKey(Entity.TAG, "my key", False),
        OrderKey(Entity.TAG, "a.b", True),
        OrderKey(Entity.ATTRIBUTE, "run_name", True),
        OrderKey(Entity.ATTRIBUTE, "end_time", True),
    ]


def test_parse_order_by_defaults() -> None:
    assert parse_order_by(None) == [OrderKey(Entity.ATTRIBUTE, "start_time", False)]
    assert parse_order_by([]) == [OrderKey(Entity.ATTRIBUTE, "start_time", False)]
    assert parse_order_by(None, "experiments") == [
        OrderKey(Entity.ATTRIBUTE, "creation_time", False),
        OrderKey(Entity.ATTRIBUTE, "experiment_id", True),
    ]
    assert parse_order_by(["name"], "experiments") == [OrderKey(Entity.ATTRIBUTE, "name", True)]


@pytest.mark.parametrize(
    ("clauses", "message", "position", "text"),
    [
        (
            ["metrics.accuracy DESCENDING"],
            "Expected ASC or DESC after the key, found 'DESCENDING'",
            17,
            "metrics.accuracy DESCENDING",
        ),
        (
            ["metrics.a DESC", "metrics.b ASC ASC"],
            "Expected ASC or DESC after the key, found 'ASC'",
            14,
            "metrics.b ASC ASC",
        ),
        (
            ["metrics.a", "metric.a DESC"],
            "order_by names metric.a more than once",
            0,
            "metric.a DESC",
        ),
        (
            ["DESC"],
            "Expected a key to order by such as metrics.accuracy, found 'DESC'",
            0,
            "DESC",
        ),
        (
            ["metrics.a, metrics.b"],
            "Expected ASC or DESC after the key, found ','",
            9,
            "metrics.a, metrics.b",
        ),
        (
            ["colour"],
            f"Unknown attribute 'colour'. Runs have the attributes {RUN_ATTRS_LISTED}; a metric, "
            "param or tag needs a prefix: metrics.colour, params.colour or tags.colour",
            0,
            "colour",
        ),
        (["`metrics.a"], "Unclosed quoted key: the ` here is never closed", 0, "`metrics.a"),
    ],
)
def test_order_by_errors(clauses: list[str], message: str, position: int, text: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_order_by(clauses)
    assert str(info.value) == str(FilterError(message, position, text))


def test_order_by_empty_clause_and_experiment_metrics() -> None:
    with pytest.raises(FilterError) as info:
        parse_order_by(["  "])
    assert str(info.value) == str(
        FilterError("Empty order_by clause; expected e.g. 'metrics.accuracy DESC'")
    )
    with pytest.raises(FilterError, match="Experiments have no metrics"):
        parse_order_by(["metrics.a"], "experiments")


# ---------------------------------------------------------------------------------------
# LIKE patterns and SQL safety
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "glob"),
    [
        ("abc", "abc"),
        ("a%c", "a*c"),
        ("a_c", "a?c"),
        ("100\\%", "100%"),
        ("a\\_b", "a_b"),
        ("a\\\\b", "a\\b"),
        ("*?[", "[*][?][[]"),
        ("]x", "]x"),
        ("%", "*"),
        ("", ""),
    ],
)
def test_like_to_glob(pattern: str, glob: str) -> None:
    assert like_to_glob(pattern) == glob


@pytest.mark.parametrize(
    ("value", "pattern", "case_sensitive", "expected"),
    [
        ("customer-churn/baseline", "customer-churn/%", True, True),
        ("Customer-Churn/baseline", "customer-churn/%", True, False),
        ("Customer-Churn/baseline", "customer-churn/%", False, True),
        ("abc", "a_c", True, True),
        ("ac", "a_c", True, False),
        ("a\nc", "a_c", True, True),
        ("a\nb", "a%", True, True),
        ("100%", "100\\%", True, True),
        ("1000", "100\\%", True, False),
        ("a*b", "a*b", True, True),
        ("axb", "a*b", True, False),
        ("[x]", "[x]", True, True),
        ("x", "[x]", True, False),
        ("ÉCOLE", "%é%", False, True),
        ("ÉCOLE", "%é%", True, False),
        ("", "", True, True),
        ("", "%", True, True),
        ("", "_", True, False),
    ],
)
def test_like_in_python_and_sql(
    value: str, pattern: str, case_sensitive: bool, expected: bool
) -> None:
    assert like_matches(value, pattern, case_sensitive) is expected
    conn = sqlite3.connect(":memory:")
    register_sql_functions(conn)
    op = "LIKE" if case_sensitive else "ILIKE"
    expr = parse_filter(f"name {op} '{pattern}'", "experiments")
    fragment = compile_filter(expr, "experiments")
    # Placeholders bind in text order: the fragment's come before the FROM's.
    sql = f"SELECT {fragment.sql} FROM (SELECT ? AS name) e"
    (got,) = conn.execute(sql, [*fragment.params, value]).fetchone()
    assert bool(got) is expected


def _reference_like(value: str, pattern: str, case_sensitive: bool) -> bool:
    """LIKE by plain recursion over the raw pattern, independent of filters.py's code."""
    if not case_sensitive:
        value, pattern = value.lower(), pattern.lower()

    @functools.cache
    def match(v: int, p: int) -> bool:
        if p == len(pattern):
            return v == len(value)
        ch = pattern[p]
        if ch == "%":
            return any(match(k, p + 1) for k in range(v, len(value) + 1))
        if ch == "_":
            return v < len(value) and match(v + 1, p + 1)
        if ch == "\\":
            p += 1
            ch = pattern[p]
        return v < len(value) and value[v] == ch and match(v + 1, p + 1)

    return match(0, 0)


LIKE_ALPHABET = ["a", "A", "b", "%", "_", "*", "?", "[", "]", "^", "-", "\\", "é", "É", "\n"]


@st.composite
def like_cases(draw: st.DrawFn) -> tuple[str, str]:
    value = "".join(draw(st.lists(st.sampled_from(LIKE_ALPHABET), max_size=6)))
    return value, draw(like_patterns([value]))


_MEMORY_DB = sqlite3.connect(":memory:")
register_sql_functions(_MEMORY_DB)


@settings(max_examples=1500, deadline=None)
@given(case=like_cases(), case_sensitive=st.booleans())
def test_like_sql_matches_reference(case: tuple[str, str], case_sensitive: bool) -> None:
    value, pattern = case
    expected = _reference_like(value, pattern, case_sensitive)
    assert like_matches(value, pattern, case_sensitive) is expected
    conn = _MEMORY_DB
    op = "LIKE" if case_sensitive else "ILIKE"
    text = f"name {op} {_quote(pattern, chr(39))}"
    fragment = compile_filter(parse_filter(text, "experiments"), "experiments")
    (got,) = conn.execute(
        f"SELECT {fragment.sql} FROM (SELECT ? AS name) e", [*fragment.params, value]
    ).fetchone()
    assert bool(got) is expected, (value, pattern, fragment.params)


def test_user_text_never_reaches_sql(store: sqlite3.Connection) -> None:
    evil = "x'); DROP TABLE runs; --"
    quoted = "'" + evil.replace("'", "''") + "'"
    text = (
        f'params.`{evil}` = {quoted} OR tags."{evil}" LIKE {quoted} '
        f"OR metrics.`{evil}` IN (1, 2) OR run_name ILIKE 'DROP%'"
    )
    fragment = compile_filter(parse_filter(text))
    assert "DROP" not in fragment.sql and "x'" not in fragment.sql
    assert evil in fragment.params
    _insert_run(store, _run(1, params={evil: evil}), 1)
    ids, _ = search_run_ids(store, ["1"], text, ALL, 10, [f"params.`{evil}`"], None)
    assert ids == [_run(1)["run_id"]]
    assert store.execute("SELECT count(*) FROM runs").fetchone() == (1,)


# ---------------------------------------------------------------------------------------
# Reference evaluator, directly
# ---------------------------------------------------------------------------------------


def test_evaluate_run_semantics() -> None:
    nan_run = _run(1, metrics={"loss": math.nan, "acc": 0.5}, params={"p": "a"})
    bare_run = _run(2)

    def holds(text: str, run: RunRecord) -> bool:
        return evaluate_run(parse_filter(text), run)

    # NaN is a logged value: != and NOT IN hold, every other comparison fails.
    assert holds("metrics.loss != 1", nan_run)
    assert holds("metrics.loss NOT IN (1)", nan_run)
    assert not holds("metrics.loss = 1", nan_run)
    assert not holds("metrics.loss < 1", nan_run) and not holds("metrics.loss >= 1", nan_run)
    assert holds("metrics.loss IS NOT NULL", nan_run)
    # A missing key matches only IS NULL.
    assert not holds("metrics.loss != 1", bare_run)
    assert not holds("params.p NOT IN ('b')", bare_run)
    assert holds("params.p IS NULL", bare_run)
    assert holds("end_time IS NULL", bare_run)
    assert not holds("end_time != 5", bare_run)
    assert holds("metrics.acc = 0.5 AND (params.p = 'b' OR params.p LIKE 'a')", nan_run)
    assert holds("", bare_run)


def test_evaluate_experiment() -> None:
    exp = ExperimentRecord(
        experiment_id="7",
        name="customer-churn/baseline",
        creation_time=5,
        last_update_time=6,
        lifecycle_stage="active",
        tags={"project": "customer-churn"},
    )
    assert evaluate_experiment(parse_filter("tags.project = 'customer-churn'", "experiments"), exp)
    assert evaluate_experiment(parse_filter("name LIKE 'customer-churn/%'", "experiments"), exp)
    assert not evaluate_experiment(parse_filter("name LIKE 'Customer%'", "experiments"), exp)
    assert evaluate_experiment(parse_filter("experiment_id = '7'", "experiments"), exp)
    assert not evaluate_experiment(parse_filter("tags.owner IS NOT NULL", "experiments"), exp)


# ---------------------------------------------------------------------------------------
# Search: examples
# ---------------------------------------------------------------------------------------


def _ids(*indexes: int) -> list[str]:
    return [_run(i)["run_id"] for i in indexes]


def test_tutorial_searches(store: sqlite3.Connection) -> None:
    runs = [
        _run(
            0,
            start_time=10,
            metrics={"accuracy": 0.95},
            params={"model_type": "RandomForest"},
            tags={"team": "ml"},
        ),
        _run(
            1,
            start_time=20,
            metrics={"accuracy": 0.97},
            params={"model_type": "RandomForest"},
            tags={"team": "ds"},
        ),
        _run(
            2,
            start_time=30,
            metrics={"accuracy": 0.99},
            params={"model_type": "SVM"},
            tags={"team": "ops"},
        ),
        _run(
            3,
            start_time=40,
            metrics={"accuracy": 0.85},
            params={"model_type": "RandomForest"},
            tags={"team": "ml"},
        ),
        _run(4, start_time=50, params={"model_type": "RandomForest"}),
    ]
    for run in runs:
        _insert_run(store, run, 1 if run["start_time"] < 40 else 2)
    ids, token = search_run_ids(
        store,
        ["1", "2"],
        "metrics.accuracy > 0.9 AND params.model_type = 'RandomForest'",
        ACTIVE_ONLY,
        100,
        ["metrics.accuracy DESC"],
        None,
    )
    assert (ids, token) == (_ids(1, 0), None)
    ids, _ = search_run_ids(
        store, ["1", "2"], "tags.team = 'ml' OR tags.team = 'ds'", ACTIVE_ONLY, 100, None, None
    )
    assert ids == _ids(3, 1, 0)  # default order: start_time DESC
    ids, _ = search_run_ids(store, ["2"], None, ACTIVE_ONLY, 100, None, None)
    assert ids == _ids(4, 3)


def test_metric_order_puts_nan_then_missing_last(store: sqlite3.Connection) -> None:
    runs = [
        _run(0, start_time=1, metrics={"m": 2.0}),
        _run(1, start_time=2, metrics={"m": math.nan}),
        _run(2, start_time=3),
        _run(3, start_time=4, metrics={"m": -1.0}),
        _run(4, start_time=5, metrics={"m": 2.0}),
    ]
    for run in runs:
        _insert_run(store, run, 1)
    desc, _ = search_run_ids(store, ["1"], None, ALL, 10, ["metrics.m DESC"], None)
    asc, _ = search_run_ids(store, ["1"], None, ALL, 10, ["metrics.m"], None)
    # Ties on the value fall back to start_time DESC.
    assert desc == _ids(4, 0, 3, 1, 2)
    assert asc == _ids(3, 4, 0, 1, 2)


def test_nan_and_missing_metrics_in_sql(store: sqlite3.Connection) -> None:
    _insert_run(store, _run(0, metrics={"loss": math.nan}), 1)
    _insert_run(store, _run(1, metrics={"loss": 1.0}), 1)
    _insert_run(store, _run(2), 1)

    def search(flt: str) -> set[str]:
        return set(search_run_ids(store, ["1"], flt, ALL, 10, None, None)[0])

    # NaN: != and NOT IN hold (IEEE 754); = < > fail. A run without the metric: only IS NULL.
    assert search("metrics.loss != 2") == set(_ids(0, 1))
    assert search("metrics.loss NOT IN (1, 2)") == set(_ids(0))
    assert search("metrics.loss = 1") == set(_ids(1))
    assert search("metrics.loss < 5 OR metrics.loss > 5") == set(_ids(1))
    assert search("metrics.loss IS NULL") == set(_ids(2))
    assert search("metrics.loss IS NOT NULL") == set(_ids(0, 1))


def test_sqlite_row_connections_and_ilike_registration(tmp_path: Path) -> None:
    conn = _open_store(tmp_path / "rows.db")
    conn.row_factory = sqlite3.Row  # as the store's connections are
    for i in range(3):
        _insert_run(conn, _run(i, start_time=i, run_name=["École", "école", "x"][i]), 1)
    ids, token = search_run_ids(conn, ["1"], "run_name ILIKE 'ÉCOLE'", ALL, 1, None, None)
    assert ids == _ids(1) and token is not None
    assert search_run_ids(conn, ["1"], "run_name ILIKE 'ÉCOLE'", ALL, 1, None, token) == (
        _ids(0),
        None,
    )
    conn.close()


def test_order_by_attribute_and_param_puts_nulls_last(store: sqlite3.Connection) -> None:
    _insert_run(store, _run(0, start_time=1, end_time=None, params={"p": "b"}), 1)
    _insert_run(store, _run(1, start_time=2, end_time=7), 1)
    _insert_run(store, _run(2, start_time=3, end_time=5, params={"p": "a"}), 1)
    for direction in ("ASC", "DESC"):
        ids, _ = search_run_ids(store, ["1"], None, ALL, 10, [f"end_time {direction}"], None)
        assert ids == (_ids(2, 1, 0) if direction == "ASC" else _ids(1, 2, 0))
        ids, _ = search_run_ids(store, ["1"], None, ALL, 10, [f"params.p {direction}"], None)
        assert ids == (_ids(2, 0, 1) if direction == "ASC" else _ids(0, 2, 1))


def test_size_limits(store: sqlite3.Connection) -> None:
    _insert_run(store, _run(0, params={"p": "v249"}, metrics={"m": 30.0}), 1)
    _insert_run(store, _run(1, start_time=2, params={"p": "other"}, metrics={"m": 3.5}), 1)
    # The most conditions allowed still run on SQLite (its expression depth is bounded).
    widest = " OR ".join(f"params.p = 'v{i}'" for i in range(MAX_CONDITIONS))
    assert search_run_ids(store, ["1"], widest, ALL, 10, None, None)[0] == _ids(0)
    too_wide = widest + " OR params.p = 'x'"
    with pytest.raises(FilterError) as info:
        parse_filter(too_wide)
    message = (
        f"Too many conditions: a filter holds at most {MAX_CONDITIONS}; "
        "use IN (...) to test one key against many values"
    )
    assert str(info.value) == str(FilterError(message, len(widest) + 4, too_wide))
    deepest = "(" * MAX_NESTING + "params.p = 'x'" + ")" * MAX_NESTING
    assert search_run_ids(store, ["1"], deepest, ALL, 10, None, None) == ([], None)
    too_deep = "(" + deepest + ")"
    with pytest.raises(FilterError) as info:
        parse_filter(too_deep)
    message = f"Too deeply nested: more than {MAX_NESTING} levels of '('"
    assert str(info.value) == str(FilterError(message, MAX_NESTING, too_deep))
    # Long IN lists: bound as one JSON array, past SQLite's limit on bound parameters.
    many = [f"'{_run(i)['run_id']}'" for i in range(40_000)]
    ids, _ = search_run_ids(store, ["1"], f"run_id IN ({', '.join(many)})", ALL, 10, None, None)
    assert ids == _ids(1, 0)
    not_in = f"attributes.run_id NOT IN ({', '.join(many[1:])})"
    assert search_run_ids(store, ["1"], not_in, ALL, 10, None, None)[0] == _ids(0)
    numbers = ", ".join(str(i / 2) for i in range(100))
    assert search_run_ids(store, ["1"], f"metrics.m IN ({numbers})", ALL, 10, None, None)[0] == (
        _ids(1, 0)
    )
    assert (
        search_run_ids(store, ["1"], f"metrics.m NOT IN ({numbers})", ALL, 10, None, None)[0] == []
    )


def test_view_types_and_paging(store: sqlite3.Connection) -> None:
    for i in range(7):
        _insert_run(
            store, _run(i, start_time=i, lifecycle_stage="deleted" if i % 3 == 0 else "active"), 1
        )
    assert search_run_ids(store, ["1"], "", DELETED_ONLY, 10, None, None)[0] == _ids(6, 3, 0)
    assert search_run_ids(store, ["1"], "", ACTIVE_ONLY, 10, None, None)[0] == _ids(5, 4, 2, 1)
    page1, token = search_run_ids(store, ["1"], "", ALL, 3, None, None)
    assert page1 == _ids(6, 5, 4) and token is not None
    # A run created after the first page does not shift the next pages (keyset tokens).
    _insert_run(store, _run(99, start_time=100), 1)
    page2, token = search_run_ids(store, ["1"], "", ALL, 3, None, token)
    assert page2 == _ids(3, 2, 1) and token is not None
    page3, token = search_run_ids(store, ["1"], "", ALL, 3, None, token)
    assert (page3, token) == (_ids(0), None)
    # Exactly a full last page: no token after it.
    assert search_run_ids(store, ["1"], "", ALL, 8, None, None)[1] is None


def test_search_argument_errors(store: sqlite3.Connection) -> None:
    _insert_run(store, _run(0), 1)
    _insert_run(store, _run(1), 1)
    _, token = search_run_ids(store, ["1"], "", ALL, 1, None, None)
    assert token is not None
    with pytest.raises(MlflowException, match="belongs to another search"):
        search_run_ids(store, ["1"], "metrics.a > 1", ALL, 1, None, token)
    with pytest.raises(MlflowException, match="Invalid page_token"):
        search_run_ids(store, ["1"], "", ALL, 1, None, "not a token!")
    with pytest.raises(MlflowException, match="Invalid page_token"):
        search_run_ids(store, ["1"], "", ALL, 1, None, token[:-4])
    with pytest.raises(
        MlflowException, match="Invalid value 0 for parameter 'max_results' supplied"
    ):
        search_run_ids(store, ["1"], "", ALL, 0, None, None)
    with pytest.raises(
        MlflowException,
        match=r"Invalid value 50001 for parameter 'max_results' supplied\. It must be at most",
    ):
        search_run_ids(store, ["1"], "", ALL, 50_001, None, None)
    with pytest.raises(MlflowException, match="Invalid run_view_type 4"):
        search_run_ids(store, ["1"], "", 4, 10, None, None)
    with pytest.raises(MlflowException, match="Invalid experiment id 'abc'"):
        search_run_ids(store, ["abc"], "", ALL, 10, None, None)
    with pytest.raises(FilterError):
        search_run_ids(store, [], "metrics.a > 'x'", ALL, 10, None, None)
    assert search_run_ids(store, [], "", ALL, 10, None, None) == ([], None)


def test_many_experiment_ids(store: sqlite3.Connection) -> None:
    _insert_run(store, _run(0), 40_000)
    ids, _ = search_run_ids(store, [str(i) for i in range(50_000)], "", ALL, 10, None, None)
    assert ids == _ids(0)


# ---------------------------------------------------------------------------------------
# Experiments: examples
# ---------------------------------------------------------------------------------------


def _experiment(
    exp_id: int,
    name: str,
    creation_time: int,
    tags: dict[str, str] | None = None,
    lifecycle_stage: str = "active",
    last_update_time: int = 0,
) -> ExperimentRecord:
    return ExperimentRecord(
        experiment_id=str(exp_id),
        name=name,
        creation_time=creation_time,
        last_update_time=last_update_time,
        lifecycle_stage=lifecycle_stage,
        tags=tags or {},
    )


def test_experiment_searches(store: sqlite3.Connection) -> None:
    for exp in [
        _experiment(0, "Default", 1),
        _experiment(1, "customer-churn/baseline", 2, {"project": "customer-churn"}),
        _experiment(2, "customer-churn/feature-engineering", 3, {"project": "customer-churn"}),
        _experiment(3, "Customer-Churn/old", 3, {"project": "Customer-Churn"}, "deleted"),
        _experiment(4, "image-classification/resnet", 3, {"project": "vision"}),
        _experiment(5, "customer-churn/hyperparameter-tuning", 3),
    ]:
        _insert_experiment(store, exp)

    def search(
        flt: str | None, view: int = ACTIVE_ONLY, order: list[str] | None = None
    ) -> list[str]:
        return search_experiment_ids(store, view, 100, flt, order, None)[0]

    assert search("tags.project = 'customer-churn'") == ["2", "1"]
    # Default order: creation_time DESC, then experiment_id ASC.
    assert search("name LIKE 'customer-churn/%'") == ["2", "5", "1"]
    assert search("name ILIKE 'customer-churn/%'", ALL) == ["2", "3", "5", "1"]
    assert search("tags.project IS NULL") == ["5", "0"]
    assert search("experiment_id IN ('0', '4')") == ["4", "0"]
    assert search(None, DELETED_ONLY) == ["3"]
    assert search(None, ALL, ["name ASC"]) == ["3", "0", "1", "2", "5", "4"]
    # An order without experiment_id is tie-broken by experiment_id DESC (MLflow's choice).
    assert search(None, ALL, ["creation_time"]) == ["0", "1", "5", "4", "3", "2"]
    assert search(None, ACTIVE_ONLY, ["tags.project DESC"]) == ["4", "2", "1", "5", "0"]
    page, token = search_experiment_ids(store, ALL, 4, None, None, None)
    assert page == ["2", "3", "4", "5"]
    assert search_experiment_ids(store, ALL, 4, None, None, token) == (["1", "0"], None)


# ---------------------------------------------------------------------------------------
# Property tests: random stores and filters against the reference evaluator
# ---------------------------------------------------------------------------------------

METRIC_KEYS = ["acc", "val loss"]
PARAM_KEYS = ["model", "my-key", "a`b"]
TAG_KEYS = ["team", "mlflow.runName"]
STRINGS = [
    "",
    "a",
    "A",
    "ab",
    "Ab",
    "ba",
    "a%b",
    "a_b",
    "a*b",
    "[x]",
    "é",
    "É",
    "x'y",
    'q"q',
    "rf",
    "a\\b",
]
# NaN often, so that its rules (!= and NOT IN hold, the rest fail, sorts last) are hit.
METRIC_VALUES = [0.0, 0.5, 1.0, -1.0, 2.5, 1e10, math.inf, -math.inf, math.nan, math.nan]
NUMBER_LITERALS: list[int | float] = [0, 1, -1, 0.5, 2.5, 3, 1e10]
TIMES = [1, 2, 3]
STATUSES = ["RUNNING", "FINISHED", "FAILED"]
RUN_IDS = [_run(i)["run_id"] for i in range(4)] + ["0" * 32]
PATTERN_PIECES = [
    "]",
    "^",
    "a",
    "A",
    "b",
    "é",
    "É",
    "%",
    "%",
    "_",
    "\\%",
    "\\_",
    "\\\\",
    "*",
    "?",
    "[",
    "'",
]
WORD_KEY = re.compile(r"\w+(\.\w+)*")


@st.composite
def run_records(draw: st.DrawFn) -> list[tuple[RunRecord, int]]:
    def some(keys: list[str], values: list[Any]) -> dict[str, Any]:
        # Each key present about half the time: dense enough that filters hit.
        return {k: draw(st.sampled_from(values)) for k in keys if draw(st.booleans())}

    n = draw(st.integers(0, 14))
    out = []
    for i in range(n):
        run = _run(
            i,
            start_time=draw(st.sampled_from(TIMES)),
            end_time=draw(st.one_of(st.none(), st.sampled_from(TIMES))),
            metrics=some(METRIC_KEYS, METRIC_VALUES),
            params=some(PARAM_KEYS, STRINGS),
            tags=some(TAG_KEYS, STRINGS),
            run_name=draw(st.sampled_from(STRINGS)),
            status=draw(st.sampled_from(STATUSES)),
            lifecycle_stage=draw(st.sampled_from(["active", "active", "deleted"])),
        )
        out.append((run, draw(st.sampled_from([1, 2]))))
    return out


def _string_values(key: Key) -> list[str]:
    if key.entity is Entity.ATTRIBUTE:
        return {
            "run_id": RUN_IDS,
            "status": STATUSES,
            "lifecycle_stage": ["active", "deleted"],
            "experiment_id": ["0", "1", "2", "3", "01"],
            "name": EXPERIMENT_NAMES,
        }.get(key.name, STRINGS)
    return STRINGS


@st.composite
def like_patterns(draw: st.DrawFn, values: list[str]) -> str:
    """Random patterns, or patterns made from a value so that they often match something.

    A derived pattern keeps each character (escaped where LIKE gives it a meaning), or
    turns it into ``_`` or ``%``, and may change its case (for ILIKE).
    """
    if draw(st.booleans()):
        return "".join(draw(st.lists(st.sampled_from(PATTERN_PIECES), max_size=4)))
    pieces = []
    for ch in draw(st.sampled_from(values)):
        how = draw(st.sampled_from(["keep", "keep", "keep", "swapcase", "_", "%"]))
        if how in ("_", "%"):
            pieces.append(how)
        else:
            ch = ch.swapcase() if how == "swapcase" else ch
            pieces.append("\\" + ch if ch in "%_\\" else ch)
    if draw(st.booleans()):
        pieces.append("%")
    return "".join(pieces)


def conditions(keys: st.SearchStrategy[Key]) -> st.SearchStrategy[Expr]:
    @st.composite
    def condition(draw: st.DrawFn) -> Expr:
        key = draw(keys)
        values: st.SearchStrategy[Any] = (
            st.sampled_from(NUMBER_LITERALS)
            if key.numeric
            else st.sampled_from(_string_values(key))
        )
        kinds = ["compare", "in", "null"] + ([] if key.numeric else ["like", "like"])
        kind = draw(st.sampled_from(kinds))
        if kind == "compare":
            ops = ["=", "!=", "<", "<=", ">", ">="] if key.numeric else ["=", "!="]
            return Compare(key, draw(st.sampled_from(ops)), draw(values))
        if kind == "in":
            return InList(
                key, tuple(draw(st.lists(values, min_size=1, max_size=3))), draw(st.booleans())
            )
        if kind == "null":
            return IsNull(key, draw(st.booleans()))
        return Like(key, draw(like_patterns(_string_values(key))), draw(st.booleans()))

    return condition()


def expressions(keys: st.SearchStrategy[Key]) -> st.SearchStrategy[Expr]:
    return st.recursive(
        conditions(keys),
        lambda children: st.one_of(
            st.lists(children, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
            st.lists(children, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
        ),
        max_leaves=6,
    )


RUN_KEYS: st.SearchStrategy[Key] = st.one_of(
    st.sampled_from(METRIC_KEYS).map(lambda k: Key(Entity.METRIC, k, True)),
    st.sampled_from(PARAM_KEYS).map(lambda k: Key(Entity.PARAM, k, False)),
    st.sampled_from(TAG_KEYS).map(lambda k: Key(Entity.TAG, k, False)),
    st.sampled_from(sorted(RUN_ATTRIBUTES)).map(
        lambda a: Key(Entity.ATTRIBUTE, a, RUN_ATTRIBUTES[a])
    ),
)
EXPERIMENT_NAMES = ["Default", "customer-churn/a", "Customer-churn/b", "nlp/x", "a%b", "é/É"]
EXPERIMENT_KEYS: st.SearchStrategy[Key] = st.one_of(
    st.sampled_from(["project", "team"]).map(lambda k: Key(Entity.TAG, k, False)),
    st.sampled_from(sorted(EXPERIMENT_ATTRIBUTES)).map(
        lambda a: Key(Entity.ATTRIBUTE, a, EXPERIMENT_ATTRIBUTES[a])
    ),
)
PREFIXES = {
    Entity.METRIC: ["metrics", "metric", "METRICS"],
    Entity.PARAM: ["params", "param", "parameters", "parameter"],
    Entity.TAG: ["tags", "tag", "Tags"],
    Entity.ATTRIBUTE: ["attributes", "attribute", "attr", "run"],
}


def _quote(text: str, quote: str) -> str:
    return quote + text.replace(quote, quote * 2) + quote


def _render_key(draw: st.DrawFn, key: Key, target: Target) -> str:
    if key.entity is Entity.ATTRIBUTE:
        names = [key.name]
        if target == "runs" and key.name == "start_time":
            names.append("created")
        if target == "runs" and key.name == "run_name":
            names += ["`Run name`", '"run name"']
        name = draw(st.sampled_from(names))
        if name.startswith(("`", '"')):
            return name
        prefixes = ["", "", "attributes.", "attribute.", "attr."]
        if target == "runs":
            prefixes.append("run.")
        return draw(st.sampled_from(prefixes)) + name
    prefix = draw(st.sampled_from(PREFIXES[key.entity]))
    forms = [_quote(key.name, "`"), _quote(key.name, '"')]
    if WORD_KEY.fullmatch(key.name):
        forms.append(key.name)
    return f"{prefix}.{draw(st.sampled_from(forms))}"


def _render_value(draw: st.DrawFn, value: object) -> str:
    if isinstance(value, str):
        return _quote(value, draw(st.sampled_from(["'", '"'])))
    if isinstance(value, int):
        return draw(st.sampled_from([str(value), f"{value}.0"]))
    assert isinstance(value, float)
    return draw(st.sampled_from([repr(value), f"{value:e}"]))


def _kw(draw: st.DrawFn, word: str) -> str:
    return draw(st.sampled_from([word, word.lower(), word.capitalize()]))


def _render(draw: st.DrawFn, expr: Expr, target: Target, parent: type | None = None) -> str:
    if isinstance(expr, (And, Or)):
        word = "AND" if isinstance(expr, And) else "OR"
        parts = [_render(draw, o, target, type(expr)) for o in expr.operands]
        text = f" {_kw(draw, word)} ".join(parts)
        # Parentheses are needed to keep a nested node of the same kind, or an OR inside
        # an AND; elsewhere they are optional and must not change the meaning.
        needed = parent is type(expr) or (parent is And and isinstance(expr, Or))
        return f"({text})" if needed or (parent and draw(st.booleans())) else text
    key = _render_key(draw, expr.key, target)
    space = draw(st.sampled_from([" ", "  "]))
    if isinstance(expr, Compare):
        op = "<>" if expr.op == "!=" and draw(st.booleans()) else expr.op
        sep = draw(st.sampled_from(["", " "]))
        text = f"{key}{sep}{op}{sep}{_render_value(draw, expr.value)}"
    elif isinstance(expr, Like):
        word = "LIKE" if expr.case_sensitive else "ILIKE"
        text = f"{key} {_kw(draw, word)}{space}{_render_value(draw, expr.pattern)}"
    elif isinstance(expr, InList):
        values = ", ".join(_render_value(draw, v) for v in expr.values)
        word = f"{_kw(draw, 'NOT')} {_kw(draw, 'IN')}" if expr.negated else _kw(draw, "IN")
        text = f"{key} {word} ({values})"
    else:
        word = f"{_kw(draw, 'IS')} {_kw(draw, 'NOT')} " if expr.negated else f"{_kw(draw, 'IS')} "
        text = f"{key} {word}{_kw(draw, 'NULL')}"
    return f"({text})" if draw(st.integers(0, 5)) == 0 else text


@st.composite
def filters(draw: st.DrawFn, target: Target) -> tuple[Expr | None, str]:
    if draw(st.integers(0, 3)) == 0:  # often none: large result sets exercise ordering
        return None, draw(st.sampled_from(["", "  "]))
    expr = draw(expressions(RUN_KEYS if target == "runs" else EXPERIMENT_KEYS))
    return expr, _render(draw, expr, target)


@st.composite
def order_bys(draw: st.DrawFn, target: Target) -> list[str] | None:
    keys = draw(
        st.lists(
            RUN_KEYS if target == "runs" else EXPERIMENT_KEYS,
            max_size=3,
            unique_by=lambda k: (k.entity, k.name),
        )
    )
    if not keys:
        return draw(st.sampled_from([None, []]))
    clauses = []
    for key in keys:
        direction = draw(st.sampled_from(["", " ASC", " DESC", " desc", " asc"]))
        clauses.append(_render_key(draw, key, target) + direction)
    return clauses


def _sort_value(record: dict[str, Any], key: OrderKey) -> tuple[int, Any]:
    """(rank, value): rank 0 for a value, then NaN (metrics), then missing."""
    if key.entity is Entity.ATTRIBUTE:
        value = record[key.key]
        if key.key == "experiment_id":
            value = int(value)
        return (0, value) if value is not None else (2, None)
    mapping = {Entity.METRIC: "metrics", Entity.PARAM: "params", Entity.TAG: "tags"}[key.entity]
    value = record[mapping].get(key.key)
    if value is None:
        return (2, None)
    if isinstance(value, float) and math.isnan(value):
        return (1, None)
    return (0, value)


def _reference_order(records: list[dict[str, Any]], keys: list[OrderKey]) -> list[dict[str, Any]]:
    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        for key in keys:
            (ra, va), (rb, vb) = _sort_value(a, key), _sort_value(b, key)
            if ra != rb:
                return -1 if ra < rb else 1  # NULLs (and NaN) last in both directions
            if ra == 0 and va != vb:
                smaller = -1 if va < vb else 1
                return smaller if key.ascending else -smaller
        return 0

    return sorted(records, key=functools.cmp_to_key(compare))


@settings(max_examples=400, deadline=None)
@given(
    runs=run_records(),
    flt=filters("runs"),
    order_by=order_bys("runs"),
    view=st.sampled_from([ACTIVE_ONLY, DELETED_ONLY, ALL]),
    experiments=st.sampled_from([["1"], ["2"], ["1", "2"]]),
    page_size=st.integers(1, 4),
)
def test_search_runs_matches_reference(
    shared_store: SearchDb,
    runs: list[tuple[RunRecord, int]],
    flt: tuple[Expr | None, str],
    order_by: list[str] | None,
    view: int,
    experiments: list[str],
    page_size: int,
) -> None:
    expr, text = flt
    assert parse_filter(text, "runs") == expr, text
    with shared_store.conn as conn:
        _clear(conn)
        for run, exp_id in runs:
            _insert_run(conn, run, exp_id)

    stages = {ACTIVE_ONLY: {"active"}, DELETED_ONLY: {"deleted"}, ALL: {"active", "deleted"}}[view]
    matching = [
        dict(run)
        for run, exp_id in runs
        if str(exp_id) in experiments
        and run["lifecycle_stage"] in stages
        and evaluate_run(expr, run)
    ]
    keys = parse_order_by(order_by, "runs")
    names = {(k.entity, k.key) for k in keys}
    if (Entity.ATTRIBUTE, "start_time") not in names:
        keys.append(OrderKey(Entity.ATTRIBUTE, "start_time", False))
    if (Entity.ATTRIBUTE, "run_id") not in names:
        keys.append(OrderKey(Entity.ATTRIBUTE, "run_id", True))
    expected = [r["run_id"] for r in _reference_order(matching, keys)]

    ids, token = shared_store.search_runs(experiments, text, view, 1000, order_by, None)
    assert (ids, token) == (expected, None), (text, order_by)
    paged = _all_pages(
        lambda tok: shared_store.search_runs(experiments, text, view, page_size, order_by, tok)
    )
    assert paged == expected, (text, order_by, page_size)

    # Every part of the filter on its own too: inside ANDs and ORs a wrong condition can
    # be masked by its neighbours, alone it cannot.
    for part in _proper_parts(expr):
        part_text = _plain(part)
        want = {
            run["run_id"]
            for run, exp_id in runs
            if str(exp_id) in experiments
            and run["lifecycle_stage"] in stages
            and evaluate_run(part, run)
        }
        got, _ = shared_store.search_runs(experiments, part_text, view, 1000, None, None)
        assert set(got) == want, part_text


def _proper_parts(expr: Expr | None) -> Iterator[Expr]:
    """Every sub-expression of ``expr`` except ``expr`` itself."""
    if isinstance(expr, (And, Or)):
        for operand in expr.operands:
            yield operand
            yield from _proper_parts(operand)


def _plain(expr: Expr) -> str:
    """One fixed spelling of ``expr`` (the random spellings are tested elsewhere)."""
    if isinstance(expr, (And, Or)):
        word = " AND " if isinstance(expr, And) else " OR "
        return "(" + word.join(_plain(o) for o in expr.operands) + ")"
    key = expr.key.name
    if expr.key.entity is not Entity.ATTRIBUTE:
        key = f"{expr.key.entity.value}.{_quote(key, '`')}"

    def value(v: object) -> str:
        return _quote(v, "'") if isinstance(v, str) else repr(v)

    if isinstance(expr, Compare):
        return f"{key} {expr.op} {value(expr.value)}"
    if isinstance(expr, Like):
        return f"{key} {'LIKE' if expr.case_sensitive else 'ILIKE'} {value(expr.pattern)}"
    if isinstance(expr, InList):
        values = ", ".join(value(v) for v in expr.values)
        return f"{key} {'NOT IN' if expr.negated else 'IN'} ({values})"
    return f"{key} IS {'NOT ' if expr.negated else ''}NULL"


@st.composite
def experiment_records(draw: st.DrawFn) -> list[ExperimentRecord]:
    out: list[ExperimentRecord] = []
    used: set[str] = set()
    for exp_id in draw(st.lists(st.integers(0, 12), unique=True, max_size=8)):
        name = draw(st.sampled_from(EXPERIMENT_NAMES))
        if name in used:  # names are unique in the store
            name = f"{name}#{exp_id}"
        used.add(name)
        out.append(
            _experiment(
                exp_id,
                name,
                draw(st.sampled_from(TIMES)),
                draw(
                    st.dictionaries(st.sampled_from(["project", "team"]), st.sampled_from(STRINGS))
                ),
                draw(st.sampled_from(["active", "deleted"])),
                draw(st.sampled_from(TIMES)),
            )
        )
    return out


@settings(max_examples=250, deadline=None)
@given(
    experiments=experiment_records(),
    flt=filters("experiments"),
    order_by=order_bys("experiments"),
    view=st.sampled_from([ACTIVE_ONLY, DELETED_ONLY, ALL]),
    page_size=st.integers(1, 3),
)
def test_search_experiments_matches_reference(
    shared_store: SearchDb,
    experiments: list[ExperimentRecord],
    flt: tuple[Expr | None, str],
    order_by: list[str] | None,
    view: int,
    page_size: int,
) -> None:
    expr, text = flt
    assert parse_filter(text, "experiments") == expr, text
    with shared_store.conn as conn:
        _clear(conn)
        for exp in experiments:
            _insert_experiment(conn, exp)
    stages = {ACTIVE_ONLY: {"active"}, DELETED_ONLY: {"deleted"}, ALL: {"active", "deleted"}}[view]
    matching = [
        dict(e)
        for e in experiments
        if e["lifecycle_stage"] in stages and evaluate_experiment(expr, e)
    ]
    keys = parse_order_by(order_by, "experiments")
    if not any(k.entity is Entity.ATTRIBUTE and k.key == "experiment_id" for k in keys):
        keys.append(OrderKey(Entity.ATTRIBUTE, "experiment_id", False))
    expected = [e["experiment_id"] for e in _reference_order(matching, keys)]

    got = shared_store.search_experiments(view, 1000, text, order_by, None)
    assert got == (expected, None), (text, order_by)
    paged = _all_pages(
        lambda tok: shared_store.search_experiments(view, page_size, text, order_by, tok)
    )
    assert paged == expected
