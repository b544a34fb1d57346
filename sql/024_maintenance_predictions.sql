-- Track C, part 1: what a maintenance prediction needs beyond the specification's columns
-- (nofx.maintenance.predictions). The metric it is about; when the limit is reached, with the
-- interval around it (time_to_failure_hours stays, rounded down, for readers of the seed
-- schema); which estimate warned (the forecast or a recent trend); and its fate: open while it
-- stands, withdrawn when a later forecast no longer sees it, averted when maintenance ran
-- before it, happened when the failure came, did_not_happen when its time passed quietly
-- without maintenance. One open prediction per component and issue: a changed prediction
-- updates it.

ALTER TABLE maintenance_predictions
  ADD COLUMN metric TEXT,
  ADD COLUMN eta TIMESTAMPTZ,
  ADD COLUMN eta_earliest TIMESTAMPTZ,
  ADD COLUMN eta_latest TIMESTAMPTZ,
  ADD COLUMN source TEXT,
  ADD COLUMN status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'withdrawn', 'averted', 'happened', 'did_not_happen')),
  ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW();

CREATE UNIQUE INDEX maintenance_predictions_one_open_idx
  ON maintenance_predictions (component_type, component_id, predicted_issue) WHERE status = 'open';
