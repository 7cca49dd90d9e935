-- Webhook events and their deliveries, as in sqlite/0010: one delivery per event and URL, claimed by every
-- replica's senders with FOR UPDATE SKIP LOCKED under a lease. `once`: at most one such event (notification.delayed).
CREATE TABLE webhook_events (
    id          text             PRIMARY KEY,
    type        text             NOT NULL,
    body        text             NOT NULL,
    once        text             UNIQUE,
    created_at  double precision NOT NULL
);

CREATE TABLE webhook_deliveries (
    seq              bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               text             NOT NULL UNIQUE,
    event_id         text             NOT NULL REFERENCES webhook_events (id),
    url              text             NOT NULL,
    status           text             NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts         integer          NOT NULL DEFAULT 0,
    next_attempt_at  double precision NOT NULL,
    lease_until      double precision,
    last_error       text,
    response_code    integer,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, seq);
