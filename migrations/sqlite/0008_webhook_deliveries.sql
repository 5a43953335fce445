-- Webhook deliveries: one row per event and endpoint, from the moment the event happens until it
-- is delivered or given up on (then kept until pruned), so a restart loses no pending delivery.
-- `payload` is the exact body sent on every attempt; no secret is stored (each attempt is signed
-- with the configured secret). `claim` and `claimed_until` are the lease of the instance delivering
-- it. It belongs to no session (no foreign key: a session.deleted event outlives its session).
-- Times are microseconds since the Unix epoch (UTC), as in `sessions`.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY NOT NULL,
    event_id         TEXT NOT NULL,
    event            TEXT NOT NULL,
    url              TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL CHECK (attempts >= 0),
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    claim            TEXT,
    claimed_until    INTEGER,
    last_attempt_at  INTEGER,
    last_http_status INTEGER,
    last_error       TEXT,
    delivered_at     INTEGER
);
-- What the delivery worker looks for: pending deliveries by due time.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- The admin listing (newest first) and pruning by age.
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);
