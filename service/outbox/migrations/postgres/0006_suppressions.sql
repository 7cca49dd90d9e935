-- The suppression list, as in sqlite/0006: addresses no new notification is sent to, compared by
-- `address_key` (domain lower-cased, local part exact). suppressing = false: a hard bounce only recorded.
CREATE TABLE suppressions (
    seq              bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    address_key      text             NOT NULL UNIQUE,
    address          text             NOT NULL,
    source           text             NOT NULL CHECK (source IN ('hard_bounce', 'manual')),
    reason           text             NOT NULL,
    smtp_reply       text,
    notification_id  text,
    suppressing      boolean          NOT NULL,
    created_at       double precision NOT NULL
);

-- Bumped by every change to the list, in the change's transaction: every replica's in-memory copy asks for
-- this one row and reloads the list only when it moved.
CREATE TABLE suppressions_version (
    id       integer PRIMARY KEY CHECK (id = 1),
    version  bigint  NOT NULL
);
INSERT INTO suppressions_version (id, version) VALUES (1, 0);
