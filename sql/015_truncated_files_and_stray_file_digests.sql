-- One vocabulary with the code (eams_pipeline.core.errors.ErrorCode; a test checks the list):
-- FILE_TRUNCATED, a file whose last record was cut short (no line break after it, and an
-- unclosed quote or fewer fields than the header).
--
-- district_alerts: two more kinds. `misnamed_digest`, the one email a day that lists a
-- district's stray files in incoming/ (subject: the district's local date); the stray files
-- it reported stay recorded as `misnamed_file` rows (subject: escaped name|size), so that
-- none is reported twice. `raw_file_kept`, the operators' alert that a raw upload was kept
-- in processed/ because it differs from the archived copy (subject: the upload key).

ALTER TABLE upload_errors DROP CONSTRAINT upload_errors_error_code_check;
ALTER TABLE upload_errors ADD CONSTRAINT upload_errors_error_code_check CHECK (error_code IN (
    'FILE_ENCODING', 'FILE_EMPTY', 'FILE_TOO_LARGE', 'FILE_TRUNCATED', 'HEADER_MISMATCH',
    'WRONG_FIELD_COUNT', 'REQUIRED_FIELD_MISSING', 'FIELD_TOO_LONG', 'INVALID_STUDENT_ID',
    'INVALID_GRADE', 'INVALID_USERNAME', 'INVALID_PASSWORD', 'INVALID_EMAIL', 'INVALID_STATUS',
    'INVALID_CHARACTERS', 'PASSWORD_REQUIRED', 'SCHOOL_NOT_FOUND', 'DUPLICATE_STUDENT_ID',
    'DUPLICATE_USERNAME', 'USERNAME_TAKEN', 'STUDENT_EXISTS', 'STUDENT_NOT_FOUND',
    'NO_LICENSE_AVAILABLE', 'GRADE_NOT_PARTICIPATING'));

ALTER TABLE district_alerts DROP CONSTRAINT district_alerts_kind_check;
ALTER TABLE district_alerts ADD CONSTRAINT district_alerts_kind_check CHECK (kind IN (
    'missing_upload', 'misnamed_file', 'misnamed_digest', 'raw_file_kept'));
