-- Track A, part 2: the decision engine's learned success model is stored as a bundle (its
-- classifier, its recovery-time model and its feature columns, JSON) next to the anomaly
-- detector's plain LightGBM text.

ALTER TABLE model_artifacts DROP CONSTRAINT model_artifacts_format_check;
ALTER TABLE model_artifacts ADD CONSTRAINT model_artifacts_format_check
  CHECK (format IN ('lightgbm-text', 'nofx-success-bundle'));
