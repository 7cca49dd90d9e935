-- Idempotency-Keys, as in sqlite/0002: one row per (caller, key), written in the same transaction as the
-- notifications its first request created. The primary key is what stops two replicas from both taking a
-- key: the second INSERT … ON CONFLICT waits for the first's transaction and then finds the key taken.
CREATE TABLE idempotency_keys (
    scope        text             NOT NULL,
    key          text             NOT NULL,
    fingerprint  text             NOT NULL,
    status_code  integer          NOT NULL,
    body         bytea            NOT NULL,
    headers      jsonb            NOT NULL,
    created_at   double precision NOT NULL,
    expires_at   double precision NOT NULL,
    PRIMARY KEY (scope, key)
);

-- The sweep's question: which keys have expired.
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
