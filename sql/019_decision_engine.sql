-- The decision engine (Track A, part 1): who may approve, the engine's policy and modes, and the
-- lifecycle of a decision.
--
-- operators: the people who may approve, reject or override a decision, with their permissions
-- (matched against recovery_playbooks.required_permissions; 'healing:*' and '*' hold a family or
-- everything). platform_controls.decision_policy: the global mode, thresholds, criterion weights
-- and approval timeouts (JSON, validated by models.decisions.DecisionPolicy; empty: defaults).
-- services.decision_mode: a service's own mode (NULL: the global one); the strictest applies.
-- autonomous_decisions gains the workflow that made it, its subject, status, who made the final
-- call, the explanation and the approval record; the specification's columns are unchanged.

CREATE TABLE operators (
  name TEXT PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.@+-]+$'),
  display_name TEXT,
  permissions TEXT[] NOT NULL DEFAULT '{}',
  created_by TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

ALTER TABLE platform_controls ADD COLUMN decision_policy JSONB NOT NULL DEFAULT '{}';

ALTER TABLE services ADD COLUMN decision_mode TEXT
  CHECK (decision_mode IN ('observe', 'assist', 'autonomous'));

ALTER TABLE autonomous_decisions ADD COLUMN workflow_id TEXT;
ALTER TABLE autonomous_decisions ADD COLUMN subject TEXT;
ALTER TABLE autonomous_decisions ADD COLUMN problem TEXT;
ALTER TABLE autonomous_decisions ADD COLUMN status TEXT;
ALTER TABLE autonomous_decisions ADD COLUMN decided_by TEXT;
ALTER TABLE autonomous_decisions ADD COLUMN explanation JSONB;
ALTER TABLE autonomous_decisions ADD COLUMN approval JSONB;
ALTER TABLE autonomous_decisions ADD COLUMN updated_at TIMESTAMPTZ;

CREATE INDEX autonomous_decisions_subject_idx
  ON autonomous_decisions (subject, problem, created_at);
CREATE INDEX learning_feedback_decision_idx ON learning_feedback (decision_id);
