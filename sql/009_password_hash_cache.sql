-- Issue 11: passwords are hashed before the apply transaction, outside the district's
-- lock, in batches that each commit here; a retry or re-run of the upload reuses them and
-- the apply only takes them (a set-based join), hashing inline just what changed in between.
--
-- Only argon2id hashes are kept (what students.password_hash stores anyway), never a
-- password. A hash is found only by its student and the keyed fingerprint of (Student ID,
-- password) (SipHash keyed by the server secret, as students.password_fingerprint): it can
-- only ever be used for that student and that password. The apply removes the rows it
-- used; the rest (rows that failed, held or discarded files) go after
-- EAMS_HASH_CACHE_RETENTION_DAYS.
CREATE TABLE password_hash_cache (
    -- no foreign key on purpose: its check would take a KEY SHARE lock on the district's
    -- row, which waits for the district lock (FOR UPDATE) held by an upload applying
    district_id           bigint NOT NULL,
    student_id            text NOT NULL,
    password_fingerprint  bigint NOT NULL,
    password_hash         text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (district_id, student_id, password_fingerprint)
);

CREATE INDEX password_hash_cache_created_at_idx ON password_hash_cache (created_at);
