-- Exactly-once record of infrastructure actions. An activity that acts on the outside world
-- first claims its idempotency key (workflow id + step); a retried attempt finds the row and
-- does not act twice. status moves started -> succeeded | skipped | failed, and a saga's
-- compensation marks the row compensated.

CREATE TABLE action_log (
  idempotency_key TEXT PRIMARY KEY,
  workflow_id TEXT NOT NULL,
  step TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('started', 'succeeded', 'skipped', 'failed', 'compensated')),
  detail JSONB NOT NULL DEFAULT '{}',
  started_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  finished_at TIMESTAMPTZ
);

CREATE INDEX action_log_workflow_id_idx ON action_log (workflow_id);
