-- INVALID_CHARACTERS: control or bidi characters in a name (the reader's issue 7).
-- The lead's migration 006 on main extends the same CHECK; reconcile at merge.
ALTER TABLE upload_errors DROP CONSTRAINT upload_errors_error_code_check;
ALTER TABLE upload_errors ADD CONSTRAINT upload_errors_error_code_check CHECK (error_code IN (
    'FILE_ENCODING', 'FILE_EMPTY', 'HEADER_MISMATCH', 'WRONG_FIELD_COUNT',
    'REQUIRED_FIELD_MISSING', 'FIELD_TOO_LONG', 'INVALID_STUDENT_ID', 'INVALID_GRADE',
    'INVALID_USERNAME', 'INVALID_PASSWORD', 'INVALID_EMAIL', 'INVALID_STATUS',
    'PASSWORD_REQUIRED', 'SCHOOL_NOT_FOUND', 'DUPLICATE_STUDENT_ID', 'DUPLICATE_USERNAME',
    'USERNAME_TAKEN', 'STUDENT_EXISTS', 'STUDENT_NOT_FOUND', 'NO_LICENSE_AVAILABLE',
    'INVALID_CHARACTERS'));
