-- Attachments' bytes, as in sqlite/0007: apart from the notifications table, so a claim or a listing never
-- reads them. The metadata is in the notification's `content`; the bytes are read for one send.
CREATE TABLE attachments (
    notification_id  text    NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    position         integer NOT NULL,
    data             bytea   NOT NULL,
    PRIMARY KEY (notification_id, position)
);
