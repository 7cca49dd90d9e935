-- Webhook events, written in the transaction of the status change they tell about (only while WEBHOOK_URLS is
-- set), and their deliveries: one per event and URL, claimed by the senders (service/events/webhooks.py).
-- `once` is set for an event sent at most once per notification (notification.delayed).
CREATE TABLE webhook_events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    body        TEXT NOT NULL,
    once        TEXT UNIQUE,
    created_at  REAL NOT NULL
);

CREATE TABLE webhook_deliveries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    event_id         TEXT    NOT NULL REFERENCES webhook_events (id),
    url              TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL    NOT NULL,
    lease_until      REAL,
    last_error       TEXT,
    response_code    INTEGER,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL
);

-- The senders' claims (due pending ones, expired leases) and the list by status.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, seq);
