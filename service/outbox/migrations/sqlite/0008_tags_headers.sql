-- A notification's tags (the `tags` of its request), one row per tag, written in the transaction that inserts
-- the notification: `?tag=` pages by (tag, seq) down this index instead of reading every row's content. No
-- foreign key: rows are never deleted, and a rebuilt notifications table keeps its seq values.
-- Headers live in the notification's content JSON only: nothing looks a notification up by them.
CREATE TABLE notification_tags (
    tag  TEXT    NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (tag, seq)
) WITHOUT ROWID;

-- A CSV job's tags (the upload's `tags` field), comma-separated: every row's notification gets them, also
-- after a restart resumes the job.
ALTER TABLE jobs ADD COLUMN tags TEXT;
