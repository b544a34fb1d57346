-- A rollback says so: `rolled_back_to` is the earlier version whose configuration a version
-- restores (NULL for a push). Diagnosis used to infer rollbacks from equal configurations, which
-- took a re-push of an old bad configuration for a rollback and so never blamed it; the intent is
-- now recorded where the rollback is written (pilot.fleet.Fleet.rollback_config).

ALTER TABLE config_versions ADD COLUMN rolled_back_to INTEGER CHECK (rolled_back_to > 0);
