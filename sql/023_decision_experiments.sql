-- Track A, part 2: A/B tests of decision strategies (nofx.decisions.experiments). At most one
-- experiment runs at a time; a decision it decided records its experiment and arm in `result`.

CREATE TABLE decision_experiments (
  name TEXT PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]+$'),
  spec JSONB NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('running', 'stopped')),
  created_by TEXT NOT NULL,
  started_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  stopped_at TIMESTAMPTZ,
  stop_reason TEXT
);

CREATE UNIQUE INDEX decision_experiments_one_running_idx ON decision_experiments ((true))
  WHERE status = 'running';
