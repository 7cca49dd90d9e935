-- A notification's tags, as in sqlite/0008: one row per tag, written in the transaction that inserts the
-- notification, so that `?tag=` pages by (tag, seq) down the primary key's index.
CREATE TABLE notification_tags (
    tag  text   NOT NULL,
    seq  bigint NOT NULL,
    PRIMARY KEY (tag, seq)
);

-- A CSV job's tags (the upload's `tags` field), comma-separated.
ALTER TABLE jobs ADD COLUMN tags text;
