-- The fleet status (one query over all districts, every 15 minutes) finds each district's
-- held uploads through this small partial index instead of reading every upload: held
-- uploads are few and wait for an operator, the uploads table grows by ~730,000 a year.
CREATE INDEX uploads_held_idx ON uploads (district_id, received_at, upload_id)
    WHERE status = 'held';
