-- CSV mail-merge jobs, as in sqlite/0004. A job's progress (rows_done) is written in the same transaction as
-- the rows' notifications, so a restart resumes after it, never repeats. Only one replica runs a job at a
-- time: the one holding its advisory lock (service/outbox/postgres_jobs.py).
CREATE TABLE jobs (
    id           text             PRIMARY KEY,
    status       text             NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    template     text             NOT NULL,
    csv_path     text             NOT NULL,
    request_id   text,
    total_rows   integer,
    rows_done    integer          NOT NULL DEFAULT 1,
    accepted     integer          NOT NULL DEFAULT 0,
    rejected     integer          NOT NULL DEFAULT 0,
    reason       text,
    created_at   double precision NOT NULL,
    finished_at  double precision
);

CREATE INDEX jobs_running ON jobs (created_at) WHERE status = 'running';

-- Every rejected row, by its row number in the CSV (the header is row 1).
CREATE TABLE job_errors (
    job_id  text    NOT NULL REFERENCES jobs (id),
    row     integer NOT NULL,
    email   text,
    reason  text    NOT NULL,
    PRIMARY KEY (job_id, row)
);

-- A job's notifications, counted by status for its progress.
ALTER TABLE notifications ADD COLUMN job_id text;
CREATE INDEX notifications_job ON notifications (job_id, status) WHERE job_id IS NOT NULL;
