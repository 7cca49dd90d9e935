-- A notification's own sender, as in sqlite/0011: NULL (MAIL_FROM) for older rows and requests without `from`.
-- A nullable column without a default: a catalog change only, no table rewrite, the lock held for an instant.
ALTER TABLE notifications ADD COLUMN sender text;
