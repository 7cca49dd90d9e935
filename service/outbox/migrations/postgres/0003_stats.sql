-- What /metrics, /v1/stats and the queue limit read, kept cheap however large the table grows and however
-- many replicas write it.

-- Notifications per status, kept by triggers in the same transaction as the change. Each status's count is
-- spread over 16 rows (shards) and a transaction adds its changes to the shard its transaction id picks: one
-- row per status that every replica updated for every mail would make all writers queue on its lock. A read
-- sums 64 rows. A trigger runs once per statement (transition tables), so a batch of 100 inserts is one
-- UPDATE, not 100.
-- Replicas still on the previous version keep writing during a rolling upgrade: without this lock a row
-- committed between the first count below and the triggers' creation would be in neither. (Applied in the
-- migration's transaction, so it is held until the counts and the triggers are both in place.)
LOCK TABLE notifications IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE notification_counts (
    status  text     NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    shard   smallint NOT NULL,
    count   bigint   NOT NULL,
    PRIMARY KEY (status, shard)
);

INSERT INTO notification_counts (status, shard, count)
SELECT s.status, g.shard, 0
FROM (VALUES ('queued'), ('sending'), ('sent'), ('failed')) AS s (status), generate_series(0, 15) AS g (shard);

UPDATE notification_counts AS c SET count = n.count
FROM (SELECT status, count(*) AS count FROM notifications GROUP BY status) AS n
WHERE c.status = n.status AND c.shard = 0;

-- Adds each status's change to this transaction's shard, statuses in a fixed order so that two transactions
-- on one shard lock its rows in the same order (no deadlock).
CREATE FUNCTION notification_counts_add(changes jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    this_shard smallint := txid_current() % 16;
    change record;
BEGIN
    FOR change IN SELECT key AS status, value::bigint AS delta FROM jsonb_each_text(changes) ORDER BY key LOOP
        IF change.delta <> 0 THEN
            UPDATE notification_counts SET count = count + change.delta
            WHERE status = change.status AND shard = this_shard;
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION notification_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM notification_counts_add(
        (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM (SELECT status, count(*) AS n FROM new_rows GROUP BY status) AS d));
    RETURN NULL;
END $$;

CREATE FUNCTION notification_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM notification_counts_add(
        (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM (
            SELECT status, sum(delta) AS n FROM (
                SELECT o.status, -1 AS delta FROM old_rows AS o JOIN new_rows AS r USING (seq) WHERE o.status <> r.status
                UNION ALL
                SELECT r.status, 1 AS delta FROM old_rows AS o JOIN new_rows AS r USING (seq) WHERE o.status <> r.status
            ) AS moves GROUP BY status) AS d));
    RETURN NULL;
END $$;

CREATE FUNCTION notification_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM notification_counts_add(
        (SELECT coalesce(jsonb_object_agg(status, -n), '{}') FROM (SELECT status, count(*) AS n FROM old_rows GROUP BY status) AS d));
    RETURN NULL;
END $$;

CREATE TRIGGER notification_counts_insert AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION notification_counts_insert();
CREATE TRIGGER notification_counts_update AFTER UPDATE ON notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION notification_counts_update();
CREATE TRIGGER notification_counts_delete AFTER DELETE ON notifications
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION notification_counts_delete();

-- Sends per minute over the last minutes: a range scan over the recent end of this index.
CREATE INDEX notifications_sent_at ON notifications (sent_at) WHERE sent_at IS NOT NULL;

-- The latest errors (retrying or failed), newest first; the query repeats this WHERE clause.
CREATE INDEX notifications_recent_errors ON notifications (updated_at)
    WHERE last_error IS NOT NULL AND status <> 'sent';
