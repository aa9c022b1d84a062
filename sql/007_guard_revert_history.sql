-- Issue 9 "Safe uploads": the change guard, full-roster mode, reverts and readable history.
--
-- districts: the guard's thresholds (NULL: the defaults of eams_pipeline.core.guard; a
--   rule whose limit is 0 or absent from the object is off) and the upload mode.
-- uploads: which guard rule tripped with its figures (kept after an approval, for the
--   audit), who decided a held upload and when, the full-roster count, and the revert.
-- student_history: the before-image of every data column (and of the password hash and
--   fingerprint, which a revert restores and nothing ever displays) and the after-image of
--   the data columns, so that a revert is a few set-based statements and `eams history`
--   shows before -> after per field. Rows written before this migration have NULL images
--   (their uploads cannot be reverted: see db/revert.py).

ALTER TABLE districts
    ADD COLUMN guard jsonb,
    ADD COLUMN mode text NOT NULL DEFAULT 'incremental'
        CHECK (mode IN ('incremental', 'full_roster'));

ALTER TABLE uploads
    ADD COLUMN guard_trip jsonb,
    ADD COLUMN guard_figures jsonb,
    ADD COLUMN deactivated_missing integer NOT NULL DEFAULT 0 CHECK (deactivated_missing >= 0),
    ADD COLUMN decision text CHECK (decision IN ('approved', 'discarded')),
    ADD COLUMN decided_by text,
    ADD COLUMN decided_at timestamptz,
    ADD COLUMN reverted_by text,
    ADD COLUMN reverted_at timestamptz,
    ADD COLUMN revert_counts jsonb,
    ADD CONSTRAINT uploads_reverted_has_time CHECK (status <> 'reverted' OR reverted_at IS NOT NULL);

ALTER TABLE student_history
    ADD COLUMN images boolean NOT NULL DEFAULT false,
    ADD COLUMN last_name_before text, ADD COLUMN last_name_after text,
    ADD COLUMN first_name_before text, ADD COLUMN first_name_after text,
    ADD COLUMN middle_name_before text, ADD COLUMN middle_name_after text,
    ADD COLUMN grade_before text, ADD COLUMN grade_after text,
    ADD COLUMN username_before text, ADD COLUMN username_after text,
    ADD COLUMN email_before text, ADD COLUMN email_after text,
    ADD COLUMN class_name_before text, ADD COLUMN class_name_after text,
    ADD COLUMN data_hash_before bigint,
    ADD COLUMN password_hash_before text,
    ADD COLUMN password_fingerprint_before bigint,
    ADD COLUMN password_changed boolean NOT NULL DEFAULT false;
-- new rows carry the images; the default false marks the rows written before 007
ALTER TABLE student_history ALTER COLUMN images SET DEFAULT true;
