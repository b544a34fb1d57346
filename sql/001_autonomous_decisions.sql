-- Track A (autonomous decision engine): the seed specification's DDL, verbatim.
-- Copied unchanged from SPEC.md; never edit this file once applied: later migrations only add.

-- Autonomous decision tables
CREATE TABLE autonomous_decisions (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  decision_type TEXT NOT NULL,
  context_data JSONB NOT NULL,
  chosen_action TEXT NOT NULL,
  alternatives_considered JSONB,
  confidence_score DECIMAL(3,2),
  risk_assessment JSONB,
  expected_outcome JSONB,
  actual_outcome JSONB,
  created_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE TABLE decision_models (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  model_type TEXT NOT NULL,
  model_version TEXT NOT NULL,
  training_data JSONB,
  performance_metrics JSONB,
  active BOOLEAN DEFAULT false,
  deployed_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE TABLE learning_feedback (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  decision_id UUID REFERENCES autonomous_decisions(id),
  outcome_quality DECIMAL(3,2),
  feedback_type TEXT NOT NULL,
  lessons_learned JSONB,
  model_adjustments JSONB,
  created_at TIMESTAMPTZ DEFAULT NOW()
);
