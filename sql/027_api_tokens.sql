-- The HTTP API's tokens (issue 11): each belongs to an operator and acts with their permissions.
-- Only a SHA-256 of the secret is kept; the token is shown once, when it is made. A token is
-- revoked, never deleted, so the audit trail's callers stay resolvable; an operator's removal
-- takes their tokens with it.

CREATE TABLE api_tokens (
  id TEXT PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
  operator TEXT NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
  secret_sha256 TEXT NOT NULL,
  label TEXT NOT NULL DEFAULT '',
  created_by TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  last_used_at TIMESTAMPTZ,
  revoked_at TIMESTAMPTZ
);

CREATE INDEX api_tokens_operator_idx ON api_tokens (operator);
