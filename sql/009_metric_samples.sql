-- Telemetry kept by the platform itself when no Prometheus server is used: every sample scraped
-- from a service's /metrics endpoint, one row per (service, metric, label set, timestamp).
--
-- A retried scrape (an activity attempt that ran twice for one monitor tick) writes the same rows
-- again; the primary key makes that a no-op (INSERT ... ON CONFLICT DO NOTHING) instead of double
-- counting. Label sets are JSONB objects, which PostgreSQL stores canonically (keys sorted, no
-- duplicates), so the md5 of their text form identifies a label set whatever order the exporter
-- wrote the labels in; the hash is a generated column because an expression cannot be part of a
-- primary key.

CREATE TABLE metric_samples (
  service TEXT NOT NULL,
  metric TEXT NOT NULL,
  labels JSONB NOT NULL DEFAULT '{}',
  labels_hash TEXT GENERATED ALWAYS AS (md5(labels::text)) STORED,
  ts TIMESTAMPTZ NOT NULL,
  value DOUBLE PRECISION NOT NULL,
  PRIMARY KEY (service, metric, labels_hash, ts)
);

-- Range queries read one metric of one service over a time window, across its label sets
-- (summed, or grouped by one label such as a histogram's "le").
CREATE INDEX metric_samples_service_metric_ts_idx ON metric_samples (service, metric, ts);

-- Retention deletes everything older than a cut-off; rows arrive in time order, so a BRIN index
-- finds them for a fraction of a B-tree's size and write cost.
CREATE INDEX metric_samples_ts_brin_idx ON metric_samples USING brin (ts);
