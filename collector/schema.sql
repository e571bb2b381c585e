-- flightlog SQLite store schema (version 1).
-- Times are epoch milliseconds unless a column says otherwise.
-- Metric points are stored as column chunks (one row per batch of points of one
-- run and key) so that ingest writes a few large rows instead of one row per point;
-- latest_metrics keeps the value search filters and get_run use.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS experiments (
    experiment_id     INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    artifact_location TEXT NOT NULL,
    lifecycle_stage   TEXT NOT NULL DEFAULT 'active',   -- 'active' | 'deleted'
    creation_time     INTEGER NOT NULL,
    last_update_time  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS experiment_tags (
    experiment_id INTEGER NOT NULL REFERENCES experiments(experiment_id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

CREATE TABLE IF NOT EXISTS runs (
    run_uuid        TEXT PRIMARY KEY,         -- 32 hex characters
    experiment_id   INTEGER NOT NULL REFERENCES experiments(experiment_id),
    run_name        TEXT NOT NULL DEFAULT '',
    user_id         TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL,            -- RUNNING | SCHEDULED | FINISHED | FAILED | KILLED
    start_time      INTEGER NOT NULL,
    end_time        INTEGER,
    artifact_uri    TEXT NOT NULL,
    lifecycle_stage TEXT NOT NULL DEFAULT 'active',
    deleted_time    INTEGER,
    last_heartbeat  INTEGER                   -- agent heartbeat, for dead-run detection
);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs (experiment_id, start_time);

CREATE TABLE IF NOT EXISTS params (
    run_uuid TEXT NOT NULL REFERENCES runs(run_uuid),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (run_uuid, key)
);

CREATE TABLE IF NOT EXISTS tags (
    run_uuid TEXT NOT NULL REFERENCES runs(run_uuid),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (run_uuid, key)
);

-- The latest point per (run, key): largest step, then largest timestamp.
-- SQLite turns NaN into NULL, so NaN is kept as is_nan = 1 with value NULL.
CREATE TABLE IF NOT EXISTS latest_metrics (
    run_uuid  TEXT NOT NULL REFERENCES runs(run_uuid),
    key       TEXT NOT NULL,
    value     REAL,
    timestamp INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    is_nan    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_uuid, key)
);

-- Column chunks of metric points, native-endian arrays: steps int64 ("q"), vals float64 ("d"),
-- ts float64 epoch seconds ("d"; shown to users as integer milliseconds).
CREATE TABLE IF NOT EXISTS metric_chunks (
    chunk_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_uuid TEXT NOT NULL REFERENCES runs(run_uuid),
    key      TEXT NOT NULL,
    n        INTEGER NOT NULL,
    min_step INTEGER NOT NULL,
    max_step INTEGER NOT NULL,
    -- Per block of 256 points: 10 float64 (min v/step/ts, max v/step/ts, last v/step/ts,
    -- point count), so a chart read of a long series touches blocks, not points. It comes
    -- before the point arrays: SQLite reads a row's columns in order through its overflow
    -- pages, so a column after megabytes of arrays would cost reading past them.
    summary  BLOB,
    steps    BLOB NOT NULL,
    vals     BLOB NOT NULL,
    ts       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS metric_chunks_series ON metric_chunks (run_uuid, key, chunk_id);

-- Ingest batches already committed, so a retried batch is acknowledged, not stored twice.
CREATE TABLE IF NOT EXISTS batches (
    batch_id    TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL
);
-- Old batch ids are pruned (collector/housekeeping.py) by time of arrival.
CREATE INDEX IF NOT EXISTS batches_received ON batches (received_at);
