-- Scheduled send and cancel, as in sqlite/0009: the statuses `scheduled` and `canceled`, and send_at. A
-- scheduled row is due at next_attempt_at (= send_at), claimed from its own small partial index like the
-- queued ones from theirs; send_at stays for the status object.
-- The ALTERs hold the table's ACCESS EXCLUSIVE lock until the migration commits, and the new CHECK scans the
-- table once under it: other replicas' claims and inserts wait that long (one sequential scan).
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'scheduled', 'canceled'));

ALTER TABLE notifications ADD COLUMN send_at double precision;

CREATE INDEX notifications_scheduled ON notifications (next_attempt_at) WHERE status = 'scheduled';

ALTER TABLE notification_counts DROP CONSTRAINT notification_counts_status_check;
ALTER TABLE notification_counts ADD CONSTRAINT notification_counts_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'scheduled', 'canceled'));
INSERT INTO notification_counts (status, shard, count)
SELECT s.status, g.shard, 0
FROM (VALUES ('scheduled'), ('canceled')) AS s (status), generate_series(0, 15) AS g (shard);

-- A CSV job's send_at: every row of the job is scheduled for it, also rows read after a restart.
ALTER TABLE jobs ADD COLUMN send_at double precision;
