-- Idempotency-Keys: one row per (caller, key), written in the same transaction as the notifications its
-- first request created, holding the answer that request got so that a retry gets it again.
-- scope is "" when the API is open, else a fingerprint of the caller's API key (never the key itself).
CREATE TABLE idempotency_keys (
    scope        TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    fingerprint  TEXT    NOT NULL,
    status_code  INTEGER NOT NULL,
    body         BLOB    NOT NULL,
    headers      TEXT    NOT NULL,
    created_at   REAL    NOT NULL,
    expires_at   REAL    NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

-- The sweep's question: which keys have expired.
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
