-- The serialised model behind a decision_models row (LightGBM's text format), kept apart so that
-- listing models never drags megabytes of trees along. One artifact per model version; at most one
-- active model per model_type.

CREATE TABLE model_artifacts (
  model_id UUID PRIMARY KEY REFERENCES decision_models(id) ON DELETE CASCADE,
  format TEXT NOT NULL CHECK (format IN ('lightgbm-text')),
  artifact TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE UNIQUE INDEX decision_models_one_active_idx ON decision_models (model_type) WHERE active;
