-- CSV mail-merge jobs. A job's progress (rows_done: the last CSV row turned into a notification or an error)
-- is written in the same transaction as the rows' notifications, so a restart resumes after it, never repeats.
CREATE TABLE jobs (
    id           TEXT    PRIMARY KEY,
    status       TEXT    NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    template     TEXT    NOT NULL,
    csv_path     TEXT    NOT NULL,
    request_id   TEXT,
    total_rows   INTEGER,
    rows_done    INTEGER NOT NULL DEFAULT 1,
    accepted     INTEGER NOT NULL DEFAULT 0,
    rejected     INTEGER NOT NULL DEFAULT 0,
    reason       TEXT,
    created_at   REAL    NOT NULL,
    finished_at  REAL
);

-- Every rejected row, by its row number in the CSV (the header is row 1).
CREATE TABLE job_errors (
    job_id  TEXT    NOT NULL REFERENCES jobs (id),
    row     INTEGER NOT NULL,
    email   TEXT,
    reason  TEXT    NOT NULL,
    PRIMARY KEY (job_id, row)
);

-- A job's notifications, counted by status for its progress.
ALTER TABLE notifications ADD COLUMN job_id TEXT;
CREATE INDEX notifications_job ON notifications (job_id, status) WHERE job_id IS NOT NULL;
