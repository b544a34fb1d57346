-- Track C: the maintenance job (workflows.maintenance.MaintenanceJobWorkflow) keeps one row of
-- maintenance_schedules per job, written as the job goes: the workflow that runs it, what it
-- maintains and before when (deadline: the earliest predicted failure), the window it chose and
-- why (window: start, end, expected load, refusals by reason), the decision that chose the
-- action, and its status (scheduled → running → completed | rolled_back, or cancelled,
-- declined by the decision, failed). A job that is moved updates its row.
--
-- Its candidates are playbooks of incident type 'maintenance:<issue>' (the issue names of
-- nofx.maintenance.predictions): drain the replica, act, check it, put it back, where a load
-- balancer is in front; in place otherwise. The decision engine scores them like healing
-- playbooks, prunes those whose capabilities the service lacks, and asks by risk.

ALTER TABLE maintenance_schedules
  ADD COLUMN workflow_id TEXT,
  ADD COLUMN component_id TEXT,
  ADD COLUMN predicted_issue TEXT,
  ADD COLUMN deadline TIMESTAMPTZ,
  ADD COLUMN decision_id UUID,
  ADD COLUMN window_plan JSONB,
  ADD COLUMN detail TEXT,
  ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW();

CREATE INDEX maintenance_schedules_component_idx
  ON maintenance_schedules (component_id, scheduled_at);

INSERT INTO recovery_playbooks
  (incident_type, playbook_name, recovery_steps, automation_level, required_permissions,
   escalation_rank)
SELECT v.incident_type, v.playbook_name, v.steps::jsonb, 'full-auto', '{maintenance:run}', v.rank
FROM (VALUES
  ('maintenance:oom', 'drain-restart-before-oom', 1,
   '[{"action": "drain_traffic", "params": {}, "timeout_seconds": 30}, {"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}, {"action": "admit_traffic", "params": {}, "timeout_seconds": 30}, {"action": "validate_requests", "params": {"via_frontend": true, "requests": 20, "max_error_ratio": 0.05, "attempts": 15}, "timeout_seconds": 120}]'),
  ('maintenance:oom', 'restart-before-oom', 2,
   '[{"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}, {"action": "validate_requests", "params": {"requests": 20, "max_error_ratio": 0.05, "attempts": 15}, "timeout_seconds": 120}]'),
  ('maintenance:disk_full', 'drain-clean-disk-before-full', 1,
   '[{"action": "drain_traffic", "params": {}, "timeout_seconds": 30}, {"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "cleanup_disk", "params": {"patterns": ["fill-*"], "min_age_seconds": 0}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}, {"action": "admit_traffic", "params": {}, "timeout_seconds": 30}, {"action": "validate_requests", "params": {"via_frontend": true, "requests": 20, "max_error_ratio": 0.05, "attempts": 15}, "timeout_seconds": 120}]'),
  ('maintenance:disk_full', 'clean-disk-before-full', 2,
   '[{"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "cleanup_disk", "params": {"patterns": ["fill-*"], "min_age_seconds": 0}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}]'),
  ('maintenance:pool_exhausted', 'release-idle-before-pool-limit', 1,
   '[{"action": "terminate_idle_connections", "params": {}, "timeout_seconds": 60}, {"action": "validate_requests", "params": {"requests": 20, "max_error_ratio": 0.05, "attempts": 15}, "timeout_seconds": 120}]'),
  ('maintenance:pool_exhausted', 'restart-before-pool-limit', 2,
   '[{"action": "restart_service", "params": {}, "timeout_seconds": 60}, {"action": "validate_health", "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60}}]')
) AS v (incident_type, playbook_name, rank, steps)
WHERE NOT EXISTS (
  SELECT 1 FROM recovery_playbooks p
  WHERE p.incident_type = v.incident_type AND p.playbook_name = v.playbook_name
);
