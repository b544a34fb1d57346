-- Every fault injected into the staging fleet, by whom and until when: the ground truth the
-- detection benchmark scores against and the labels the learned detector trains on (together with
-- resolved incidents). Never used to decide anything live.

CREATE TABLE fault_injections (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  service TEXT NOT NULL,
  kind TEXT NOT NULL,
  params JSONB NOT NULL DEFAULT '{}',
  injected_by TEXT NOT NULL,
  source TEXT NOT NULL CHECK (source IN ('cli', 'benchmark', 'chaos', 'test', 'training')),
  expected_pattern TEXT,
  injected_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  cleared_at TIMESTAMPTZ,
  CHECK (cleared_at IS NULL OR cleared_at >= injected_at)
);

CREATE INDEX fault_injections_service_time_idx ON fault_injections (service, injected_at);
