-- The suppression list: addresses no new notification is sent to. `address_key` is the address as compared
-- (domain lower-cased, local part exact: service.domain.mailbox_key). A hard bounce with
-- SUPPRESS_ON_HARD_BOUNCE=false is recorded here with suppressing = 0: known, not enforced.
CREATE TABLE suppressions (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    address_key      TEXT    NOT NULL UNIQUE,
    address          TEXT    NOT NULL,
    source           TEXT    NOT NULL CHECK (source IN ('hard_bounce', 'manual')),
    reason           TEXT    NOT NULL,
    smtp_reply       TEXT,
    notification_id  TEXT,
    suppressing      INTEGER NOT NULL,
    created_at       REAL    NOT NULL
);

-- Bumped by every change to the list, in the change's transaction: each process' in-memory copy of the list
-- asks for this one row and reloads the list only when it moved.
CREATE TABLE suppressions_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL
);
INSERT INTO suppressions_version (id, version) VALUES (1, 0);
