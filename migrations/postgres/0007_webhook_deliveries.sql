-- Webhook deliveries: one row per event and endpoint, from the moment the event happens until it
-- is delivered or given up on (then kept until pruned), so a restart loses no pending delivery.
-- `payload` is the exact body sent on every attempt; no secret is stored (each attempt is signed
-- with the configured secret). `claim` and `claimed_until` are the lease of the instance delivering
-- it: instances sharing the database claim due rows with FOR UPDATE SKIP LOCKED and only the current
-- claim may record an attempt, so no row is sent twice at once. It belongs to no session (no
-- foreign key: a session.deleted event outlives its session).
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    event_id         uuid NOT NULL,
    event            text NOT NULL,
    url              text NOT NULL,
    payload          text NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL CHECK (attempts >= 0),
    created_at       timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    claim            uuid,
    claimed_until    timestamptz,
    last_attempt_at  timestamptz,
    last_http_status integer,
    last_error       text,
    delivered_at     timestamptz
);
-- What the delivery workers look for: pending deliveries by due time.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- The admin listing (newest first) and pruning by age.
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);
