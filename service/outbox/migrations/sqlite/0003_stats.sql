-- What /metrics and /v1/stats read, kept cheap however large the table grows.
-- NOTE: the migration runner splits on ";" at the end of a line, so each trigger stays on one line.

-- Notifications per status, kept by triggers in the same transaction as the change: a scrape reads four
-- rows instead of counting millions of `sent` ones.
CREATE TABLE notification_counts (
    status  TEXT    PRIMARY KEY CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    count   INTEGER NOT NULL
);

INSERT INTO notification_counts (status, count)
SELECT s.status, (SELECT count(*) FROM notifications n WHERE n.status = s.status)
FROM (SELECT 'queued' AS status UNION ALL SELECT 'sending' UNION ALL SELECT 'sent' UNION ALL SELECT 'failed') s;

CREATE TRIGGER notification_counts_insert AFTER INSERT ON notifications BEGIN UPDATE notification_counts SET count = count + 1 WHERE status = NEW.status; END;

CREATE TRIGGER notification_counts_update AFTER UPDATE OF status ON notifications WHEN OLD.status <> NEW.status BEGIN UPDATE notification_counts SET count = count - 1 WHERE status = OLD.status; UPDATE notification_counts SET count = count + 1 WHERE status = NEW.status; END;

CREATE TRIGGER notification_counts_delete AFTER DELETE ON notifications BEGIN UPDATE notification_counts SET count = count - 1 WHERE status = OLD.status; END;

-- Sends per minute over the last minutes: a range scan over the recent end of this index.
CREATE INDEX notifications_sent_at ON notifications (sent_at) WHERE sent_at IS NOT NULL;

-- The latest errors (retrying or failed), newest first. The WHERE clause is repeated word for word in the
-- query so that SQLite uses this partial index.
CREATE INDEX notifications_recent_errors ON notifications (updated_at)
    WHERE last_error IS NOT NULL AND status <> 'sent';
