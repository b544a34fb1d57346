-- The recovery playbooks the platform ships with. Each insert happens only when no playbook of
-- that incident type and name exists yet, so an operator's own copy is never duplicated.

INSERT INTO recovery_playbooks
  (incident_type, playbook_name, recovery_steps, automation_level, required_permissions)
SELECT 'service_down', 'restart-service',
       '[{"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}]'::jsonb,
       'full-auto', '{healing:restart}'::text[]
WHERE NOT EXISTS (
  SELECT 1 FROM recovery_playbooks
  WHERE incident_type = 'service_down' AND playbook_name = 'restart-service'
);

INSERT INTO recovery_playbooks
  (incident_type, playbook_name, recovery_steps, automation_level, required_permissions)
SELECT 'service_hung', 'restart-hung-service',
       '[{"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}]'::jsonb,
       'full-auto', '{healing:restart}'::text[]
WHERE NOT EXISTS (
  SELECT 1 FROM recovery_playbooks
  WHERE incident_type = 'service_hung' AND playbook_name = 'restart-hung-service'
);
