-- Versioned service configuration, so a bad config push can be rolled back to a known version.
-- At most one version per service is active (the partial unique index); activating a version
-- means deactivating the current one in the same transaction.

CREATE TABLE config_versions (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  service TEXT NOT NULL REFERENCES services(name),
  version INTEGER NOT NULL CHECK (version > 0),
  config JSONB NOT NULL,
  applied_by TEXT NOT NULL,
  reason TEXT,
  active BOOLEAN NOT NULL DEFAULT false,
  created_at TIMESTAMPTZ DEFAULT NOW(),
  UNIQUE (service, version)
);

CREATE UNIQUE INDEX config_versions_one_active_idx ON config_versions (service) WHERE active;
