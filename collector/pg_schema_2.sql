-- flightlog PostgreSQL store, migration 2: indexes for search over many runs.
--
-- A filtered search joins each candidate run to its other conditions and to the
-- order-by value by (run_uuid, key) probes. With the value carried in the primary key
-- (INCLUDE), every probe is answered from the index alone, with no heap page: 3 us a
-- probe instead of 6-10 us on the 100,000-run search of bench/bench_team.py.
-- The values are already in the (key, value, run_uuid) indexes, so writes that change
-- a value were never HOT updates; carrying it here adds no index write.
CREATE UNIQUE INDEX params_run_key ON params (run_uuid, key) INCLUDE (value);
ALTER TABLE params DROP CONSTRAINT params_pkey,
    ADD CONSTRAINT params_pkey PRIMARY KEY USING INDEX params_run_key;
CREATE UNIQUE INDEX tags_run_key ON tags (run_uuid, key) INCLUDE (value);
ALTER TABLE tags DROP CONSTRAINT tags_pkey,
    ADD CONSTRAINT tags_pkey PRIMARY KEY USING INDEX tags_run_key;
CREATE UNIQUE INDEX latest_metrics_run_key ON latest_metrics (run_uuid, key)
    INCLUDE (value, is_nan);
ALTER TABLE latest_metrics DROP CONSTRAINT latest_metrics_pkey,
    ADD CONSTRAINT latest_metrics_pkey PRIMARY KEY USING INDEX latest_metrics_run_key;

-- The run side of those probes (its experiment, stage and default sort key), from the
-- index alone. runs_pkey stays: the foreign keys of the side tables reference it.
CREATE INDEX runs_search_probe ON runs (run_uuid)
    INCLUDE (experiment_id, lifecycle_stage, start_time);

-- The default order, start_time DESC then run_uuid ASC, read in index order within an
-- experiment: the first page and every keyset page after it read only their rows,
-- ties on start_time included.
CREATE INDEX runs_experiment_order ON runs (experiment_id, start_time DESC, run_uuid);
DROP INDEX runs_experiment;

-- Ingest: steps (mostly consecutive integers) and timestamps (mostly equal seconds)
-- compress well, and every byte of a chunk is written twice before a commit returns
-- (WAL, then the table) and read back by every history request. lz4 cut both by 2.9x
-- on the bench's series (26 MB of WAL per million points down to 9 MB) for about a
-- millisecond of CPU per 100,000 points. Values keep migration 1's EXTERNAL: float
-- mantissas barely compress. A server built without lz4 keeps its default (pglz).
ALTER TABLE metric_chunks ALTER COLUMN steps SET STORAGE EXTENDED,
    ALTER COLUMN ts SET STORAGE EXTENDED;
DO $$
BEGIN
    ALTER TABLE metric_chunks ALTER COLUMN steps SET COMPRESSION lz4,
        ALTER COLUMN ts SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
