-- District operations (issue 10): per-district file encoding, participating grades, the
-- time the nightly file is due, contacts for failures; the alerts sent to districts (each
-- once); when the raw upload was removed from the district's SFTP processed/ directory.

ALTER TABLE districts
    ADD COLUMN encoding text NOT NULL DEFAULT 'utf-8'
        CHECK (encoding IN ('utf-8', 'windows-1252', 'latin-1')),
    -- NULL: every grade participates
    ADD COLUMN grades text[],
    -- NULL: no missing-upload alert; else the local time the nightly file is due
    ADD COLUMN expected_by time,
    ADD COLUMN failure_contacts text[] NOT NULL DEFAULT '{}';

-- One row per alert sent: the unique key makes "once" durable across ticks, code reloads
-- and sensor cursor resets. `subject` is the day (missing upload, the district's local
-- date of the due time) or the file name and size (misnamed file).
CREATE TABLE district_alerts (
    district_id  bigint NOT NULL REFERENCES districts,
    kind         text NOT NULL CHECK (kind IN ('missing_upload', 'misnamed_file')),
    subject      text NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    detail       text,
    PRIMARY KEY (district_id, kind, subject)
);

ALTER TABLE uploads ADD COLUMN raw_removed_at timestamptz;
