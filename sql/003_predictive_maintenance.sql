-- Track C (predictive maintenance and optimisation): the seed specification's DDL, verbatim.
-- Copied unchanged from SPEC.md; never edit this file once applied: later migrations only add.

-- Predictive maintenance tables
CREATE TABLE maintenance_predictions (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  component_type TEXT NOT NULL,
  component_id TEXT NOT NULL,
  predicted_issue TEXT NOT NULL,
  probability DECIMAL(3,2),
  time_to_failure_hours INTEGER,
  recommended_action JSONB,
  business_impact JSONB,
  created_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE TABLE maintenance_schedules (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  prediction_id UUID REFERENCES maintenance_predictions(id),
  scheduled_at TIMESTAMPTZ NOT NULL,
  maintenance_type TEXT NOT NULL,
  estimated_duration_minutes INTEGER,
  required_resources JSONB,
  status TEXT NOT NULL,
  completed_at TIMESTAMPTZ
);

CREATE TABLE optimization_recommendations (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  optimization_type TEXT NOT NULL,
  current_state JSONB NOT NULL,
  recommended_state JSONB NOT NULL,
  expected_improvement JSONB,
  implementation_steps JSONB[],
  risk_assessment JSONB,
  created_at TIMESTAMPTZ DEFAULT NOW()
);
