-- The problem patterns detection can name (models.detection.PATTERNS). Success rate and average
-- resolution time start empty and are kept current from incident outcomes; an operator's own row
-- for the same signature is never duplicated.

INSERT INTO healing_patterns (problem_signature, proven_solutions)
SELECT signature, ARRAY[]::jsonb[]
FROM unnest(ARRAY[
  'service_down', 'service_hung', 'error_spike_after_config_change', 'latency_regression',
  'db_pool_exhaustion', 'stale_cache', 'overload', 'memory_leak', 'disk_filling'
]) AS signature
WHERE NOT EXISTS (
  SELECT 1 FROM healing_patterns p WHERE p.problem_signature = signature
);
