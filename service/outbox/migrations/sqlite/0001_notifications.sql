-- The outbox table: one row per accepted notification, its mail content as JSON and its delivery state.
-- Times are UNIX seconds (REAL) so that the due query compares numbers, not strings.
CREATE TABLE notifications (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    status           TEXT    NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    content          TEXT    NOT NULL,
    message_id       TEXT    NOT NULL,
    request_id       TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    smtp_reply       TEXT,
    refused          TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    sent_at          REAL,
    next_attempt_at  REAL    NOT NULL
);

-- The dispatcher's question: which queued notifications are due, earliest first.
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);

-- Listing by status, newest first.
CREATE INDEX notifications_status_seq ON notifications (status, seq);

-- Readiness probes write here: proves the file is writable without touching notifications.
CREATE TABLE heartbeat (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    at  REAL NOT NULL
);
