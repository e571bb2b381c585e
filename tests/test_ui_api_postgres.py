"""The web UI's JSON reads on a collector whose store is PostgreSQL.

The same tests as tests/test_ui_api.py (imported, so they are one piece of code), with
``tracking`` pointed at a collector on a fresh database of the session's PostgreSQL
cluster (tests/pgserver.py): experiment summaries, columns, runs and filters, metric
extremes, parents and children, the downsampled, zoomed and followed metric reads, the
many-series reads of tests/test_ui_metrics_api.py and the live reads of
tests/test_ui_live_api.py all come from the PostgreSQL store's own SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgserver import PgServer

import flightlog
from tests.conftest import CollectorProcess, start_collector
from tests.test_ui_api import (  # noqa: F401  (collected here, on PostgreSQL)
    test_experiments_runs_and_filters,
    test_metric_extremes_per_run,
    test_metric_reads_keep_spikes_zoom_to_raw_and_follow_new_points,
    test_run_parent_children_and_metric_keys,
)
from tests.test_ui_live_api import (  # noqa: F401  (collected here, on PostgreSQL)
    test_metrics_after_each_runs_own_step,
    test_run_states_report_many_runs_in_one_call,
)
from tests.test_ui_metrics_api import (  # noqa: F401  (collected here, on PostgreSQL)
    test_a_cached_series_is_replaced_when_new_points_arrive,
    test_infinities_are_sent_as_strings_and_nan_as_null,
    test_many_runs_in_one_post_match_one_get_each,
    test_runs_page_size_is_capped_like_mlflow_search,
    test_step_arguments_past_int64_are_refused_and_the_last_step_has_nothing_after,
)


@pytest.fixture
def tracking(tmp_path: Path, pg_server: PgServer) -> Iterator[CollectorProcess]:
    """flightlog pointed at a real collector process on a fresh PostgreSQL database."""
    uri = pg_server.create_database()
    # The later --store wins: the directory keeps the port file and log, the data
    # goes to the database.
    c = start_collector(
        tmp_path / "store", None, "--store", uri, "--artifacts", str(tmp_path / "artifacts")
    )
    flightlog.set_tracking_uri(c.url)
    yield c
    c.stop()
    # The test's runs went to the database, not to a SQLite file in the directory.
    with psycopg.connect(uri) as conn:
        row = conn.execute("SELECT COUNT(*) FROM runs").fetchone()
    assert row is not None and row[0] > 0
    assert not (tmp_path / "store" / "flightlog.db").exists()
