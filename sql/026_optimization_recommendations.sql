-- Track C, part 2: a recommendation belongs to a service and names what it changes (target: a
-- metric's size, a setting); a pass that recommends the same change again supersedes the open
-- one, so a (service, type, target) has at most one open recommendation. Applying it is a
-- decision (decision_id); what it achieved, measured after, sits beside what it was expected to
-- (realised_improvement next to expected_improvement). Rows are never deleted.

ALTER TABLE optimization_recommendations
  ADD COLUMN service TEXT,
  ADD COLUMN target TEXT,
  ADD COLUMN status TEXT NOT NULL DEFAULT 'open',
  ADD COLUMN decision_id UUID,
  ADD COLUMN realised_improvement JSONB,
  ADD COLUMN applied_at TIMESTAMPTZ,
  ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  ADD CONSTRAINT optimization_recommendations_status_check CHECK (
    status IN ('open', 'superseded', 'withdrawn', 'applying', 'applied', 'rolled_back',
               'dismissed'));

CREATE UNIQUE INDEX optimization_recommendations_open_idx
  ON optimization_recommendations (service, optimization_type, target) WHERE status = 'open';
