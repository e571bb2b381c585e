-- Dataset inputs of runs (MLflow's runs/log-inputs), written by the REST API (collector/rest.py).
-- One row per (run, dataset name, dataset digest): logging the same dataset to a run again is
-- a no-op, as in MLflow. The Dataset message (name, digest, source_type, source, schema,
-- profile) and the input's tags are kept as the JSON the client sent, because nothing in
-- flightlog searches inside them; they are only read back with the run.
CREATE TABLE IF NOT EXISTS run_inputs (
    input_id       INTEGER PRIMARY KEY AUTOINCREMENT,   -- keeps the order inputs were logged in
    run_uuid       TEXT NOT NULL REFERENCES runs(run_uuid),
    dataset_name   TEXT NOT NULL,
    dataset_digest TEXT NOT NULL,
    dataset_json   TEXT NOT NULL,                       -- {"name", "digest", "source_type", ...}
    tags_json      TEXT NOT NULL,                       -- [{"key", "value"}, ...]
    UNIQUE (run_uuid, dataset_name, dataset_digest)
);
