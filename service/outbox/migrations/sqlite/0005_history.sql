-- Every attempt's outcome, newest last, as a JSON list of {at, outcome, smtp_code, message}: written by the
-- same UPDATE as the outcome itself, the last HISTORY_LIMIT (50) kept. NULL for rows from before: no history.
ALTER TABLE notifications ADD COLUMN history TEXT;

-- The readiness probe writes this much once a write has failed (a full disk): a few bytes of heartbeat fit
-- where a notification does not, so it proves there is room again before readiness passes.
ALTER TABLE heartbeat ADD COLUMN room BLOB;
