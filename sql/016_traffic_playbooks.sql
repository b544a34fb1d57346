-- Traffic rerouting through HAProxy (nofx.healing.actions: shift_weight, drain_traffic). An
-- overloaded replica behind a load balancer is relieved by sending its new requests to the other
-- replicas: its weight goes to 0 (refused when it is the last server taking traffic), then real
-- requests through the load balancer (metadata.haproxy_frontend) must come back good and fast: an
-- overloaded pilot queues its requests (p95 ~100 ms and more, against ~15 ms calm). The decision
-- track offers it only where the target declares the traffic.weight capability (an HAProxy admin
-- socket, backend and server in its inventory metadata); elsewhere an overload still goes to a
-- person. As in 013 and 015, it is inserted only when no playbook of that type and name exists.

INSERT INTO recovery_playbooks
  (incident_type, playbook_name, recovery_steps, automation_level, required_permissions,
   escalation_rank)
SELECT v.incident_type, v.playbook_name, v.steps::jsonb, 'full-auto', '{healing:traffic}', 1
FROM (VALUES
  ('overload', 'shift-traffic-off-overloaded-replica',
   '[{"action": "shift_weight", "params": {"weight": 0}, "timeout_seconds": 30}, {"action": "validate_requests", "params": {"via_frontend": true, "requests": 20, "max_error_ratio": 0.05, "max_p95_ms": 75, "attempts": 15}, "timeout_seconds": 120}]')
) AS v (incident_type, playbook_name, steps)
WHERE NOT EXISTS (
  SELECT 1 FROM recovery_playbooks p
  WHERE p.incident_type = v.incident_type AND p.playbook_name = v.playbook_name
);
