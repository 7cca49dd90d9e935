-- The outbox table, as in sqlite/0001: one row per accepted notification, its mail content as JSON and its
-- delivery state. Times are UNIX seconds (double precision), like the SQLite file, so both backends compare
-- the same numbers. PostgreSQL adds the claim's lease: which replica holds a `sending` row, and until when.
CREATE TABLE notifications (
    seq              bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               text             NOT NULL UNIQUE,
    status           text             NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    content          jsonb            NOT NULL,
    message_id       text             NOT NULL,
    request_id       text,
    attempts         integer          NOT NULL DEFAULT 0,
    last_error       text,
    smtp_reply       text,
    refused          jsonb,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    sent_at          double precision,
    next_attempt_at  double precision NOT NULL,
    lease_until      double precision,
    claimed_by       text
);

-- The claimers' two questions, kept small by being partial: which queued rows are due, earliest first, and
-- which claims have outlived their lease (a replica died holding them). Sent and failed rows are in neither.
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'queued';
CREATE INDEX notifications_lease ON notifications (lease_until) WHERE status = 'sending';

-- Listing by status, newest first.
CREATE INDEX notifications_status_seq ON notifications (status, seq);

-- Readiness probes write here: proves the database takes writes without touching notifications.
CREATE TABLE heartbeat (
    id  integer          PRIMARY KEY CHECK (id = 1),
    at  double precision NOT NULL
);
