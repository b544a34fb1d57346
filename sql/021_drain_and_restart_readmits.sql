-- A drain-and-restart playbook drained its replica, restarted it and validated it, and then left
-- it drained: the incident closed with the group one replica short (the action matrix scored all
-- three 0 of 2, judged out of rotation), and only the re-admission pass would have put it back
-- minutes later. The playbook now ends as a person would end it: once the restarted replica
-- answers its health checks, `admit_traffic` puts it back into rotation, and the requests are
-- validated through the frontend with it serving. On a failure the saga undoes the admission,
-- the restart and the drain, in that order. Playbooks an operator has edited are left alone.
UPDATE recovery_playbooks
SET recovery_steps = '[{"action": "drain_traffic", "params": {}, "timeout_seconds": 30}, {"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}, {"action": "admit_traffic", "params": {}, "timeout_seconds": 30}, {"action": "validate_requests", "params": {"via_frontend": true, "requests": 20, "max_error_ratio": 0.05, "attempts": 15}, "timeout_seconds": 120}]'::jsonb
WHERE playbook_name IN (
    'drain-and-restart-dead-replica', 'drain-and-restart-hung-replica',
    'drain-and-restart-leaking-replica'
  )
  AND updated_at IS NULL;
