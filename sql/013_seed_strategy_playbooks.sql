-- Playbooks for every problem pattern the detectors name, each built from the healing actions
-- of nofx.healing.actions (models/actions.py validates their parameters). As in 008, a playbook is
-- inserted only when no playbook of that incident type and name exists, so an operator's own copy
-- is never duplicated.

INSERT INTO recovery_playbooks
  (incident_type, playbook_name, recovery_steps, automation_level, required_permissions)
SELECT v.incident_type, v.playbook_name, v.steps::jsonb, v.automation_level, v.permissions::text[]
FROM (VALUES
  ('error_spike_after_config_change', 'rollback-config',
   '[{"action": "rollback_config", "params": {}, "timeout_seconds": 60}, {"action": "validate_requests", "params": {"requests": 20, "max_error_ratio": 0.05, "attempts": 15}, "timeout_seconds": 120}]',
   'full-auto', '{healing:config}'),
  ('latency_regression', 'rollback-slow-config',
   '[{"action": "rollback_config", "params": {}, "timeout_seconds": 60}, {"action": "validate_requests", "params": {"requests": 20, "max_error_ratio": 0.05, "max_p95_ms": 250, "attempts": 15}, "timeout_seconds": 120}]',
   'full-auto', '{healing:config}'),
  ('db_pool_exhaustion', 'release-stuck-connections',
   '[{"action": "terminate_idle_connections", "params": {"idle_seconds": 2, "scans": 3}, "timeout_seconds": 60}, {"action": "validate_requests", "params": {"requests": 20, "max_error_ratio": 0.05, "attempts": 15}, "timeout_seconds": 120}]',
   'full-auto', '{healing:database}'),
  ('stale_cache', 'invalidate-cache',
   '[{"action": "invalidate_cache", "params": {"namespace": "cache", "warm_requests": 3}, "timeout_seconds": 60}, {"action": "validate_requests", "params": {"requests": 10, "fresh_cache": true, "attempts": 10}, "timeout_seconds": 120}]',
   'full-auto', '{healing:cache}'),
  ('memory_leak', 'restart-leaking-service',
   '[{"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}]',
   'full-auto', '{healing:restart}'),
  ('disk_filling', 'stop-writer-and-quarantine-files',
   '[{"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "cleanup_disk", "params": {"patterns": ["fill-*"], "min_age_seconds": 0}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}]',
   'full-auto', '{healing:restart,healing:disk}')
) AS v (incident_type, playbook_name, steps, automation_level, permissions)
WHERE NOT EXISTS (
  SELECT 1 FROM recovery_playbooks p
  WHERE p.incident_type = v.incident_type AND p.playbook_name = v.playbook_name
);
