-- Every attempt's outcome, newest last, as a JSON list of {at, outcome, smtp_code, message}: written by the
-- same UPDATE as the outcome itself, the last HISTORY_LIMIT (50) kept. NULL for rows from before: no history.
ALTER TABLE notifications ADD COLUMN history jsonb;
