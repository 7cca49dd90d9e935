-- Attachments' bytes, one row each, apart from the notifications table: a claim or a listing reads
-- notifications only, so a 5 MB attachment costs them nothing. What the API shows of an attachment (filename,
-- content type, content id, size) is in the notification's `content` JSON; the bytes are read for one send.
CREATE TABLE attachments (
    notification_id  TEXT    NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    data             BLOB    NOT NULL,
    PRIMARY KEY (notification_id, position)
);
