-- The audit trail: append-only, each row carrying the hash of the previous one.
-- Rows are written only by nofx.audit.append_audit, which serialises writers with an advisory
-- lock so that all events form one chain; `nofx audit verify` (nofx.audit.verify_chain)
-- recomputes every hash. The UNIQUE constraint on prev_hash makes a forked chain impossible
-- even for a writer that bypasses the lock.

CREATE TABLE audit_events (
  id BIGSERIAL PRIMARY KEY,
  occurred_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  entity_type TEXT NOT NULL,
  entity_id TEXT NOT NULL,
  workflow_id TEXT,
  reason TEXT,
  details JSONB NOT NULL DEFAULT '{}',
  idempotency_key TEXT UNIQUE,
  prev_hash TEXT NOT NULL UNIQUE,
  hash TEXT NOT NULL UNIQUE
);

CREATE INDEX audit_events_entity_idx ON audit_events (entity_type, entity_id);
CREATE INDEX audit_events_workflow_id_idx ON audit_events (workflow_id);

-- History is evidence: refuse any change to it, whoever asks. Verifying the chain after a
-- deliberate tamper (tests) needs `ALTER TABLE audit_events DISABLE TRIGGER USER` as the owner.
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege',
          HINT = 'Record a correction as a new audit event instead.';
END;
$$;

CREATE TRIGGER audit_events_append_only
  BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();

CREATE TRIGGER audit_events_no_truncate
  BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
