-- Scheduled send and cancel: two more statuses, `scheduled` (waiting for its send_at) and `canceled`, and the
-- send_at itself. SQLite cannot alter a CHECK constraint, so `notifications` and `notification_counts` are
-- rebuilt by SQLite's documented procedure (https://www.sqlite.org/lang_altertable.html#otheralter): create
-- the new table, copy, drop the old, rename the new, then its indexes and triggers again. The runner applies
-- this with foreign keys off and checks them (PRAGMA foreign_key_check) before it commits, so tables of later
-- migrations that reference notifications keep their rows. `seq` values are copied, and AUTOINCREMENT's
-- high-water mark with them: no seq is ever handed out twice.
-- A scheduled row is due at next_attempt_at (= send_at): the claim and the due index need nothing new;
-- send_at stays for the status object. NOTE: a column another migration adds to notifications before this one
-- must be listed here too (tests/outbox/test_schedule_migration.py compares the columns before and after).

DROP TRIGGER notification_counts_insert;
DROP TRIGGER notification_counts_update;
DROP TRIGGER notification_counts_delete;

CREATE TABLE new_notifications (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    status           TEXT    NOT NULL
                     CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'scheduled', 'canceled')),
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
    next_attempt_at  REAL    NOT NULL,
    job_id           TEXT,
    history          TEXT,
    send_at          REAL
);

INSERT INTO new_notifications (
    seq, id, status, content, message_id, request_id, attempts, last_error, smtp_reply, refused,
    created_at, updated_at, sent_at, next_attempt_at, job_id, history
)
SELECT
    seq, id, status, content, message_id, request_id, attempts, last_error, smtp_reply, refused,
    created_at, updated_at, sent_at, next_attempt_at, job_id, history
FROM notifications;

-- AUTOINCREMENT's high-water mark: the old table's, which may be above max(seq) when the newest rows are gone.
DELETE FROM sqlite_sequence WHERE name = 'new_notifications';
INSERT INTO sqlite_sequence (name, seq) SELECT 'new_notifications', seq FROM sqlite_sequence WHERE name = 'notifications';

DROP TABLE notifications;
ALTER TABLE new_notifications RENAME TO notifications;

CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_status_seq ON notifications (status, seq);
CREATE INDEX notifications_sent_at ON notifications (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX notifications_recent_errors ON notifications (updated_at)
    WHERE last_error IS NOT NULL AND status <> 'sent';
CREATE INDEX notifications_job ON notifications (job_id, status) WHERE job_id IS NOT NULL;

CREATE TABLE new_notification_counts (
    status  TEXT    PRIMARY KEY
            CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'scheduled', 'canceled')),
    count   INTEGER NOT NULL
);
INSERT INTO new_notification_counts (status, count) SELECT status, count FROM notification_counts;
INSERT INTO new_notification_counts (status, count) VALUES ('scheduled', 0), ('canceled', 0);
DROP TABLE notification_counts;
ALTER TABLE new_notification_counts RENAME TO notification_counts;

CREATE TRIGGER notification_counts_insert AFTER INSERT ON notifications BEGIN UPDATE notification_counts SET count = count + 1 WHERE status = NEW.status; END;

CREATE TRIGGER notification_counts_update AFTER UPDATE OF status ON notifications WHEN OLD.status <> NEW.status BEGIN UPDATE notification_counts SET count = count - 1 WHERE status = OLD.status; UPDATE notification_counts SET count = count + 1 WHERE status = NEW.status; END;

CREATE TRIGGER notification_counts_delete AFTER DELETE ON notifications BEGIN UPDATE notification_counts SET count = count - 1 WHERE status = OLD.status; END;

-- A CSV job's send_at: every row of the job is scheduled for it, also rows read after a restart.
ALTER TABLE jobs ADD COLUMN send_at REAL;
