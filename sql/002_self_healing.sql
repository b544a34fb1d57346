-- Track B (self-healing infrastructure): the seed specification's DDL, verbatim.
-- Copied unchanged from SPEC.md; never edit this file once applied: later migrations only add.

-- Self-healing infrastructure tables
CREATE TABLE healing_incidents (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  incident_type TEXT NOT NULL,
  detection_method TEXT NOT NULL,
  root_cause JSONB,
  healing_strategy TEXT NOT NULL,
  healing_actions JSONB[],
  status TEXT NOT NULL,
  started_at TIMESTAMPTZ DEFAULT NOW(),
  resolved_at TIMESTAMPTZ,
  resolution_time_ms INTEGER
);

CREATE TABLE healing_patterns (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  problem_signature TEXT NOT NULL,
  proven_solutions JSONB[],
  success_rate DECIMAL(3,2),
  average_resolution_time_ms INTEGER,
  last_updated TIMESTAMPTZ DEFAULT NOW()
);

CREATE TABLE recovery_playbooks (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  incident_type TEXT NOT NULL,
  playbook_name TEXT NOT NULL,
  recovery_steps JSONB NOT NULL,
  automation_level TEXT CHECK (automation_level IN ('manual', 'semi-auto', 'full-auto')),
  required_permissions TEXT[],
  created_at TIMESTAMPTZ DEFAULT NOW()
);
