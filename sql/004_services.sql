-- The service inventory: what the platform may act on and how much it matters.
-- Tier, capacity, dependencies and SLO targets are inputs to risk scoring (Track A) and to the
-- blast-radius guardrail; provider names the infrastructure provider that can act on the service
-- (e.g. 'supervisor', 'kubernetes', 'simulated'); endpoint is the base URL of its health checks.

CREATE TABLE services (
  name TEXT PRIMARY KEY,
  tier TEXT NOT NULL DEFAULT 'tier-2' CHECK (tier IN ('tier-0', 'tier-1', 'tier-2', 'tier-3')),
  owner TEXT,
  provider TEXT NOT NULL,
  endpoint TEXT,
  dependencies TEXT[] NOT NULL DEFAULT '{}',
  capacity INTEGER NOT NULL DEFAULT 1 CHECK (capacity > 0),
  slo_targets JSONB NOT NULL DEFAULT '{}',
  metadata JSONB NOT NULL DEFAULT '{}',
  created_at TIMESTAMPTZ DEFAULT NOW(),
  updated_at TIMESTAMPTZ DEFAULT NOW()
);

-- Keep updated_at honest whichever client writes the row (CLI, activity or psql by hand).
CREATE FUNCTION services_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := NOW();
  RETURN NEW;
END;
$$;

CREATE TRIGGER services_touch_updated_at
  BEFORE UPDATE ON services
  FOR EACH ROW EXECUTE FUNCTION services_touch_updated_at();
