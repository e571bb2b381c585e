"""Run and experiment search over a store (SQLite, or PostgreSQL with its dialect).

Both searches return ids only; the store loads the entities it needs. Order: the
order_by keys, each with NULLs last whatever the direction (for metrics: real values,
then NaN, then runs without the metric, as MLflow orders them), then the tie-breakers
MLflow uses, so that every order is total and pages never overlap or skip:

- runs: ``start_time DESC`` unless order_by names start_time, then ``run_id ASC``;
- experiments: default ``creation_time DESC, experiment_id ASC``; with an order_by that
  does not name experiment_id, ``experiment_id DESC`` is appended (MLflow's choice).

Page tokens are keyset tokens: URL-safe base64 of JSON ``{"v": 1, "q": fingerprint,
"after": [sort values of the last row returned]}``. The next page is "rows strictly
after that row in the sort order", so runs created or deleted between two calls do not
shift later pages (an offset token would repeat or skip runs). The fingerprint is a
hash of the search's arguments (without max_results): a token used with another
filter, order, experiment list or view type is refused rather than misread. Clients
must treat the token as opaque.

The SQL needs the indexes in ``search_indexes.sql`` to be fast, and ILIKE needs the
``flightlog_lower`` SQL function: :func:`prepare_connection` registers it (the store
calls it on every connection it opens); a search on an unprepared connection registers
it itself when the filter uses ILIKE.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flightlog.collector.filters import (
    ENTITY_TABLES,
    RUN_COLUMNS,
    SQLITE,
    Dialect,
    Entity,
    OrderKey,
    SqlFragment,
    SqlValue,
    Target,
    compile_filter,
    parse_filter,
    parse_order_by,
    register_sql_functions,
)
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from flightlog.core.validation import parse_experiment_id

__all__ = [
    "ACTIVE_ONLY",
    "ALL",
    "DELETED_ONLY",
    "MAX_RESULTS_LIMIT",
    "prepare_connection",
    "search_experiment_ids",
    "search_run_ids",
]

# MLflow's ViewType values.
ACTIVE_ONLY = 1
DELETED_ONLY = 2
ALL = 3
# MLflow's SEARCH_MAX_RESULTS_THRESHOLD: one page is bounded; callers page for more.
MAX_RESULTS_LIMIT = 50_000

_TOKEN_VERSION = 1


@dataclass(frozen=True)
class _SortColumn:
    sql: str  # an expression over the query's aliases; fixed text, never user input
    ascending: bool


@dataclass(frozen=True)
class _OrderPlan:
    joins: str
    join_params: list[SqlValue]
    columns: list[_SortColumn]


def prepare_connection(conn: sqlite3.Connection) -> None:
    """Register the SQL functions search needs; the store calls this on each connection."""
    register_sql_functions(conn)


def _ensure_sql_functions(conn: sqlite3.Connection) -> None:
    # For connections the store did not prepare (tests, tools). Registering only when
    # missing matters: redefining a function fails while a statement is running on conn.
    try:
        conn.execute("SELECT flightlog_lower('')").fetchall()
    except sqlite3.OperationalError:
        register_sql_functions(conn)


def _lifecycle_condition(alias: str, view_type: int, what: str, dialect: Dialect) -> str:
    if view_type == ACTIVE_ONLY:
        return f"{alias}.lifecycle_stage = 'active'"
    if view_type == DELETED_ONLY:
        return f"{alias}.lifecycle_stage = 'deleted'"
    if view_type == ALL:
        return dialect.true
    raise MlflowException(
        f"Invalid {what} {view_type!r}: use 1 (ACTIVE_ONLY), 2 (DELETED_ONLY) or 3 (ALL)",
        INVALID_PARAMETER_VALUE,
    )


def _check_max_results(max_results: int) -> None:
    # MLflow's text first (clients and MLflow's tests match on it), flightlog's hint after.
    if isinstance(max_results, bool) or not isinstance(max_results, int):
        why = "It must be an integer"
    elif max_results < 1:
        why = "It must be a positive integer"
    elif max_results > MAX_RESULTS_LIMIT:
        why = f"It must be at most {MAX_RESULTS_LIMIT}; page with the returned token for more"
    else:
        return
    raise MlflowException(
        f"Invalid value {max_results!r} for parameter 'max_results' supplied. {why}",
        INVALID_PARAMETER_VALUE,
    )


_EXPERIMENT_ORDER_COLUMNS = {
    "name": "e.name",
    "experiment_id": "e.experiment_id",  # numeric order, as MLflow's integer column sorts
    "creation_time": "e.creation_time",
    "last_update_time": "e.last_update_time",
    "lifecycle_stage": "e.lifecycle_stage",
}
# Only these attribute columns can be NULL (schema.sql); the rest need no NULL-rank column.
_NULLABLE_ATTRIBUTES = frozenset({"end_time"})


def _order_plan(keys: list[OrderKey], target: Target) -> _OrderPlan:
    """Sort columns for the keys: a NULL-rank column (ascending) where needed, the value."""
    joins: list[str] = []
    join_params: list[SqlValue] = []
    columns: list[_SortColumn] = []
    for i, key in enumerate(keys):
        if key.entity is Entity.ATTRIBUTE:
            table = RUN_COLUMNS if target == "runs" else _EXPERIMENT_ORDER_COLUMNS
            value = table[key.key]
            if key.key in _NULLABLE_ATTRIBUTES:
                columns.append(_SortColumn(_null_rank(value), True))
            columns.append(_SortColumn(value, key.ascending))
            continue
        alias = f"o{i}"
        if target == "runs":
            side, on = ENTITY_TABLES[key.entity], f"{alias}.run_uuid = r.run_uuid"
        else:
            side, on = "experiment_tags", f"{alias}.experiment_id = e.experiment_id"
        joins.append(f"LEFT JOIN {side} {alias} ON {on} AND {alias}.key = ?")
        join_params.append(key.key)
        value = f"{alias}.value"
        if key.entity is Entity.METRIC:
            # NaN (value NULL, is_nan 1) after real values, before missing: MLflow's order.
            rank = f"(CASE WHEN {alias}.is_nan = 1 THEN 1 WHEN {value} IS NULL THEN 2 ELSE 0 END)"
        else:
            rank = _null_rank(value)
        columns.append(_SortColumn(rank, True))
        columns.append(_SortColumn(value, key.ascending))
    return _OrderPlan(" ".join(joins), join_params, columns)


def _null_rank(value: str) -> str:
    # An integer (not a boolean) in every dialect, so page tokens hold the same JSON.
    return f"(CASE WHEN {value} IS NULL THEN 1 ELSE 0 END)"


def _fingerprint(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _encode_token(fingerprint: str, after: Sequence[SqlValue]) -> str:
    payload = json.dumps({"v": _TOKEN_VERSION, "q": fingerprint, "after": list(after)})
    return base64.urlsafe_b64encode(payload.encode()).decode()


def _decode_token(token: str, fingerprint: str, width: int) -> list[SqlValue]:
    bad = MlflowException(
        "Invalid page_token: pass back the token the previous page returned",
        INVALID_PARAMETER_VALUE,
    )
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, UnicodeError):
        raise bad from None
    if not isinstance(payload, dict) or payload.get("v") != _TOKEN_VERSION:
        raise bad
    if payload.get("q") != fingerprint:
        raise MlflowException(
            "This page_token belongs to another search: the filter, order_by, experiments "
            "or view type changed since the first page",
            INVALID_PARAMETER_VALUE,
        )
    after = payload.get("after")
    if (
        not isinstance(after, list)
        or len(after) != width
        or not all(v is None or isinstance(v, (str, int, float)) for v in after)
        or any(isinstance(v, bool) for v in after)
        # SQLite integers are int64; a forged token must not reach it with a bigger one.
        or any(isinstance(v, int) and not -(2**63) <= v < 2**63 for v in after)
    ):
        raise bad
    return after


def _keyset_condition(
    columns: list[_SortColumn], after: list[SqlValue], dialect: Dialect
) -> SqlFragment:
    """Rows strictly after ``after`` in the order: an OR of "equal so far, then greater".

    The first sort column is never NULL (a NULL rank, or a NOT NULL attribute), so the
    OR implies ``first >= after[0]`` (``<=`` descending); saying so in a plain AND
    lets an index on that column (start_time) skip the earlier pages' rows.
    """
    terms: list[str] = []
    params: list[SqlValue] = []
    bound: list[str] = []
    bound_params: list[SqlValue] = []
    if columns and after and after[0] is not None:
        bound.append(f"{columns[0].sql} {'>=' if columns[0].ascending else '<='} ? AND ")
        bound_params.append(after[0])
    for i, col in enumerate(columns):
        equal = [f"{c.sql} {dialect.null_safe_eq} ?" for c in columns[:i]]  # NULL = NULL
        params.extend(after[:i])
        # A NULL boundary (a rank already says "missing") has nothing strictly after it
        # within the same rank; `> NULL` is NULL, i.e. false, which is what we want.
        equal.append(f"{col.sql} {'>' if col.ascending else '<'} ?")
        params.append(after[i])
        terms.append("(" + " AND ".join(equal) + ")")
    return SqlFragment(
        "(" + "".join(bound) + "(" + " OR ".join(terms) + "))", [*bound_params, *params]
    )


def _search_page(
    conn: Any,
    *,
    target: Target,
    select_id: str,
    from_clause: str,
    base_where: list[str],
    base_params: list[SqlValue],
    filter_string: str | None,
    plan: _OrderPlan,
    max_results: int,
    page_token: str | None,
    fingerprint: str,
    dialect: Dialect,
) -> tuple[list[str], str | None]:
    expr = parse_filter(filter_string, target)
    fragment = compile_filter(expr, target, dialect)
    if "flightlog_lower" in fragment.sql:
        _ensure_sql_functions(conn)
    where = [*base_where, fragment.sql]
    params: list[SqlValue] = [*plan.join_params, *base_params, *fragment.params]
    if page_token:
        after = _decode_token(page_token, fingerprint, len(plan.columns))
        keyset = _keyset_condition(plan.columns, after, dialect)
        where.append(keyset.sql)
        params.extend(keyset.params)
    select = ", ".join([select_id, *(c.sql for c in plan.columns)])
    order = ", ".join(f"{c.sql} {'ASC' if c.ascending else 'DESC'}" for c in plan.columns)
    sql = (
        f"SELECT {select} FROM {from_clause} {plan.joins} "
        f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
    )
    params.append(max_results + 1)  # one extra row says whether another page exists
    rows = dialect.execute(conn, sql, params)
    ids = [str(row[0]) for row in rows[:max_results]]
    next_token = None
    if len(rows) > max_results:
        next_token = _encode_token(fingerprint, list(rows[max_results - 1][1:]))
    return ids, next_token


def search_run_ids(
    conn: Any,
    experiment_ids: Sequence[str],
    filter_string: str | None,
    run_view_type: int,
    max_results: int,
    order_by: Sequence[str] | None,
    page_token: str | None,
    dialect: Dialect = SQLITE,
) -> tuple[list[str], str | None]:
    """Search runs; return one page of run ids in order and the next page's token.

    :param conn: a connection to a store with ``schema.sql`` and ``search_indexes.sql``
        (or the PostgreSQL store's schema, with ``dialect=POSTGRES``).
    :param experiment_ids: experiments to search (MLflow's string ids); none finds none.
    :param filter_string: the filter language of :mod:`flightlog.collector.filters`.
    :param run_view_type: 1 ACTIVE_ONLY, 2 DELETED_ONLY, 3 ALL (MLflow's ``ViewType``).
    :param max_results: page size, 1 to :data:`MAX_RESULTS_LIMIT`.
    :param order_by: e.g. ``["metrics.accuracy DESC", "params.lr"]``; default
        ``start_time DESC``. NULLs last; ties broken by start_time DESC then run_id.
    :param page_token: ``None`` for the first page, else the token a previous page returned.
    :return: ``(run_ids, next_page_token)``; the token is ``None`` on the last page.
    :raises FilterError: for a malformed filter or order_by (names the position).
    :raises MlflowException: ``INVALID_PARAMETER_VALUE`` for other bad arguments.
    """
    _check_max_results(max_results)
    lifecycle = _lifecycle_condition("r", run_view_type, "run_view_type", dialect)
    if isinstance(experiment_ids, str):  # a lone id, not its characters
        experiment_ids = [experiment_ids]
    exp_ids: list[int] = []
    for exp_id in experiment_ids:
        exp_ids.append(parse_experiment_id(exp_id))
    keys = parse_order_by(order_by, "runs")
    names = {(k.entity, k.key) for k in keys}
    if (Entity.ATTRIBUTE, "start_time") not in names:
        keys.append(OrderKey(Entity.ATTRIBUTE, "start_time", False))
    if (Entity.ATTRIBUTE, "run_id") not in names:
        keys.append(OrderKey(Entity.ATTRIBUTE, "run_id", True))
    if not exp_ids:
        parse_filter(filter_string, "runs")  # a bad filter is an error even with no experiments
        return [], None
    fingerprint = _fingerprint(
        "runs", sorted(set(exp_ids)), filter_string or "", run_view_type, list(order_by or [])
    )
    unique_ids = sorted(set(exp_ids))
    if len(unique_ids) == 1:
        # One experiment: an equality lets the (experiment_id, start_time) index
        # (runs_experiment; runs_experiment_order on PostgreSQL) deliver the default
        # order, so a page reads its rows instead of sorting the whole experiment.
        experiments: SqlFragment = SqlFragment("r.experiment_id = ?", [unique_ids[0]])
    else:
        id_params: list[SqlValue] = []
        experiments = SqlFragment(
            dialect.in_ids("r.experiment_id", unique_ids, id_params), id_params
        )
    return _search_page(
        conn,
        target="runs",
        select_id="r.run_uuid",
        from_clause="runs r",
        base_where=[experiments.sql, lifecycle],
        base_params=experiments.params,
        filter_string=filter_string,
        plan=_order_plan(keys, "runs"),
        max_results=max_results,
        page_token=page_token,
        fingerprint=fingerprint,
        dialect=dialect,
    )


def search_experiment_ids(
    conn: Any,
    view_type: int,
    max_results: int,
    filter_string: str | None,
    order_by: Sequence[str] | None,
    page_token: str | None,
    dialect: Dialect = SQLITE,
) -> tuple[list[str], str | None]:
    """Search experiments; return one page of experiment ids (strings) and the next token.

    :param view_type: 1 ACTIVE_ONLY, 2 DELETED_ONLY, 3 ALL (MLflow's ``ViewType``).
    :param max_results: page size, 1 to :data:`MAX_RESULTS_LIMIT`.
    :param filter_string: e.g. ``"tags.project = 'customer-churn'"`` or
        ``"name LIKE 'customer-churn/%'"``; attributes name, experiment_id,
        creation_time, last_update_time, lifecycle_stage, and ``tags.<key>``.
    :param order_by: attributes or tags, e.g. ``["name ASC"]``; default
        ``creation_time DESC, experiment_id ASC`` (MLflow's).
    :param page_token: ``None`` for the first page, else the token a previous page returned.
    :return: ``(experiment_ids, next_page_token)``; the token is ``None`` on the last page.
    :raises FilterError: for a malformed filter or order_by (names the position).
    :raises MlflowException: ``INVALID_PARAMETER_VALUE`` for other bad arguments.
    """
    _check_max_results(max_results)
    lifecycle = _lifecycle_condition("e", view_type, "view_type", dialect)
    keys = parse_order_by(order_by, "experiments")
    if not any(k.entity is Entity.ATTRIBUTE and k.key == "experiment_id" for k in keys):
        keys.append(OrderKey(Entity.ATTRIBUTE, "experiment_id", False))
    fingerprint = _fingerprint("experiments", filter_string or "", view_type, list(order_by or []))
    return _search_page(
        conn,
        target="experiments",
        select_id="e.experiment_id",
        from_clause="experiments e",
        base_where=[lifecycle],
        base_params=[],
        filter_string=filter_string,
        plan=_order_plan(keys, "experiments"),
        max_results=max_results,
        page_token=page_token,
        fingerprint=fingerprint,
        dialect=dialect,
    )
