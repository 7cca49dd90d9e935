-- A notification's own sender (the request's `from`, within ALLOWED_FROM): its From header and envelope sender.
-- NULL for every row before this and for every request without one: those go out from MAIL_FROM, as before.
ALTER TABLE notifications ADD COLUMN sender TEXT;
