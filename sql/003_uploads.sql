-- Uploads, their errors and the per-student history of what each upload changed.

CREATE TABLE uploads (
    upload_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id    bigint NOT NULL REFERENCES districts,
    -- stable business key: the Dagster partition key, or one made by `eams process`
    upload_key     text NOT NULL UNIQUE,
    file_name      text NOT NULL,
    content_sha256 text CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    archive_path   text,
    received_at    timestamptz NOT NULL,
    applied_at     timestamptz,
    status         text NOT NULL DEFAULT 'received'
                   CHECK (status IN ('received', 'processed', 'partially_processed',
                                     'rejected', 'superseded')),
    rows           integer CHECK (rows >= 0),
    added          integer CHECK (added >= 0),
    activated      integer CHECK (activated >= 0),
    deactivated    integer CHECK (deactivated >= 0),
    updated        integer CHECK (updated >= 0),
    unchanged      integer CHECK (unchanged >= 0),
    errors         integer CHECK (errors >= 0),
    error_codes    jsonb,
    error_file     text,
    CONSTRAINT uploads_counts_add_up CHECK (
        rows IS NULL
        OR rows = added + activated + deactivated + updated + unchanged + errors),
    CONSTRAINT uploads_applied_has_time CHECK (
        status NOT IN ('processed', 'partially_processed', 'rejected') OR applied_at IS NOT NULL)
);
CREATE INDEX uploads_district_received_idx ON uploads (district_id, received_at DESC);

CREATE TABLE upload_errors (
    upload_id    bigint NOT NULL REFERENCES uploads ON DELETE CASCADE,
    seq          integer NOT NULL,
    line_number  integer NOT NULL CHECK (line_number >= 1),
    student_id   text,
    column_name  text,
    error_code   text NOT NULL CHECK (error_code IN (
        'FILE_ENCODING', 'FILE_EMPTY', 'HEADER_MISMATCH', 'WRONG_FIELD_COUNT',
        'REQUIRED_FIELD_MISSING', 'FIELD_TOO_LONG', 'INVALID_STUDENT_ID', 'INVALID_GRADE',
        'INVALID_USERNAME', 'INVALID_PASSWORD', 'INVALID_EMAIL', 'INVALID_STATUS',
        'PASSWORD_REQUIRED', 'SCHOOL_NOT_FOUND', 'DUPLICATE_STUDENT_ID', 'DUPLICATE_USERNAME',
        'USERNAME_TAKEN', 'STUDENT_EXISTS', 'STUDENT_NOT_FOUND', 'NO_LICENSE_AVAILABLE')),
    message      text NOT NULL,
    PRIMARY KEY (upload_id, seq)
);

CREATE TABLE student_history (
    upload_id     bigint NOT NULL REFERENCES uploads ON DELETE CASCADE,
    student_pk    bigint NOT NULL REFERENCES students ON DELETE CASCADE,
    line_number   integer NOT NULL,
    change        text NOT NULL CHECK (change IN ('added', 'activated', 'deactivated', 'updated')),
    status_before text CHECK (status_before IN ('active', 'deactivated')),
    status_after  text NOT NULL CHECK (status_after IN ('active', 'deactivated')),
    order_before  bigint REFERENCES orders,
    order_after   bigint NOT NULL REFERENCES orders,
    school_before bigint REFERENCES schools,
    school_after  bigint NOT NULL REFERENCES schools,
    data_changed  boolean NOT NULL,
    PRIMARY KEY (upload_id, student_pk)
);
CREATE INDEX student_history_student_idx ON student_history (student_pk);
