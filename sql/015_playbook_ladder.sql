-- The escalation ladder: per incident type, playbooks are tried in escalation_rank order (then
-- by estimated success); when one fails and is rolled back, the incident tries the next, and
-- after the last a person takes over. Operators disable a playbook instead of deleting it, so
-- the incidents and decisions that name it keep their meaning.

ALTER TABLE recovery_playbooks ADD COLUMN escalation_rank INTEGER NOT NULL DEFAULT 1
  CHECK (escalation_rank >= 1);
ALTER TABLE recovery_playbooks ADD COLUMN enabled BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE recovery_playbooks ADD COLUMN updated_at TIMESTAMPTZ;

CREATE UNIQUE INDEX recovery_playbooks_type_name_idx
  ON recovery_playbooks (incident_type, playbook_name);

-- Second rungs: when releasing stuck sessions or invalidating the cache does not hold, the bug is
-- in the process (a leak that keeps leaking, a refresher that keeps failing): restart it.
INSERT INTO recovery_playbooks
  (incident_type, playbook_name, recovery_steps, automation_level, required_permissions,
   escalation_rank)
SELECT v.incident_type, v.playbook_name, v.steps::jsonb, 'full-auto', '{healing:restart}', 2
FROM (VALUES
  ('db_pool_exhaustion', 'restart-leaking-service',
   '[{"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "validate_requests", "params": {"requests": 20, "max_error_ratio": 0.05, "attempts": 15}, "timeout_seconds": 120}]'),
  ('stale_cache', 'restart-cache-refresher',
   '[{"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "validate_requests", "params": {"requests": 10, "fresh_cache": true, "attempts": 10}, "timeout_seconds": 120}]')
) AS v (incident_type, playbook_name, steps)
WHERE NOT EXISTS (
  SELECT 1 FROM recovery_playbooks p
  WHERE p.incident_type = v.incident_type AND p.playbook_name = v.playbook_name
);
