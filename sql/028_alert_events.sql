-- Alerts received from Alertmanager (issue 11): every alert of every webhook call, with what the
-- platform did with it — opened an incident, joined the running one, held it back (and why), or
-- kept a resolved alert as evidence (an alert's resolution never resolves an incident: healing
-- verifies its own work). Rows are never changed.

CREATE TABLE alert_events (
  id BIGSERIAL PRIMARY KEY,
  received_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  fingerprint TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
  service TEXT NOT NULL,
  pattern TEXT NOT NULL,
  alertname TEXT,
  starts_at TIMESTAMPTZ,
  ends_at TIMESTAMPTZ,
  labels JSONB NOT NULL,
  annotations JSONB NOT NULL DEFAULT '{}',
  generator_url TEXT,
  receiver TEXT,
  group_key TEXT,
  outcome TEXT NOT NULL CHECK (outcome IN ('opened', 'joined', 'held', 'evidence')),
  workflow_id TEXT,
  reason TEXT,
  received_by TEXT NOT NULL
);

CREATE INDEX alert_events_fingerprint_idx ON alert_events (fingerprint, received_at);
CREATE INDEX alert_events_workflow_idx ON alert_events (workflow_id);
