-- Guardrails every healing action passes (nofx.healing.guardrails).
--
-- platform_controls: one row per control; 'automation' holds the kill switch (nofx pause /
-- resume) and the guardrail policy (JSON, validated by models.guardrails.GuardrailPolicy; empty
-- means the defaults). change_freezes: windows during which no automated change is made.
-- action_leases: one row per action in flight; the global concurrency limit and the blast radius
-- count them, and a lease whose worker died expires on its own. guardrail_verdicts: every check,
-- allowed or not, with the guardrail that decided and why — a refusal is never silent.

CREATE TABLE platform_controls (
  name TEXT PRIMARY KEY,
  paused BOOLEAN NOT NULL DEFAULT false,
  reason TEXT,
  changed_by TEXT,
  changed_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  policy JSONB NOT NULL DEFAULT '{}'
);

INSERT INTO platform_controls (name) VALUES ('automation') ON CONFLICT (name) DO NOTHING;

CREATE TABLE change_freezes (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  scope TEXT NOT NULL DEFAULT '*',
  starts_at TIMESTAMPTZ NOT NULL,
  ends_at TIMESTAMPTZ NOT NULL,
  reason TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  CHECK (ends_at > starts_at)
);

CREATE INDEX change_freezes_window_idx ON change_freezes (starts_at, ends_at);

CREATE TABLE action_leases (
  idempotency_key TEXT PRIMARY KEY,
  service TEXT NOT NULL,
  service_group TEXT NOT NULL,
  workflow_id TEXT NOT NULL,
  action TEXT NOT NULL,
  acquired_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX action_leases_group_idx ON action_leases (service_group);

CREATE TABLE guardrail_verdicts (
  id BIGSERIAL PRIMARY KEY,
  decided_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  workflow_id TEXT NOT NULL,
  service TEXT NOT NULL,
  action TEXT NOT NULL,
  verdict TEXT NOT NULL CHECK (verdict IN ('allow', 'wait', 'ask')),
  guardrail TEXT,
  reason TEXT NOT NULL,
  details JSONB NOT NULL DEFAULT '{}'
);

CREATE INDEX guardrail_verdicts_service_idx ON guardrail_verdicts (service, decided_at);
