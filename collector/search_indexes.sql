-- Indexes for run and experiment search (collector/search.py); run after schema.sql.
-- A filter on a param, tag or metric compiles to
--   run_uuid IN (SELECT run_uuid FROM <table> WHERE key = ? AND <value condition>)
-- and these (key, value, id) indexes answer that subquery from the index alone: an
-- equality or a range walks only the matching entries instead of every run's rows.
-- The primary keys (run_uuid, key) already serve order_by joins and IS NULL checks.

CREATE INDEX IF NOT EXISTS params_key_value ON params (key, value, run_uuid);
CREATE INDEX IF NOT EXISTS tags_key_value ON tags (key, value, run_uuid);
CREATE INDEX IF NOT EXISTS latest_metrics_key_value ON latest_metrics (key, value, run_uuid);
CREATE INDEX IF NOT EXISTS experiment_tags_key_value ON experiment_tags (key, value, experiment_id);
