-- One vocabulary with the code (eams_pipeline.core.outcome.UploadStatus and
-- eams_pipeline.core.errors.ErrorCode; a test checks these lists equal the enums):
-- the statuses of the change guard and of reverts, and the error codes of unreadable or
-- oversized files, control characters and grades outside the district's participation.

ALTER TABLE uploads DROP CONSTRAINT uploads_status_check;
ALTER TABLE uploads ADD CONSTRAINT uploads_status_check CHECK (status IN (
    'received', 'processed', 'partially_processed', 'rejected', 'superseded',
    'held', 'discarded', 'reverted'));

ALTER TABLE upload_errors DROP CONSTRAINT upload_errors_error_code_check;
ALTER TABLE upload_errors ADD CONSTRAINT upload_errors_error_code_check CHECK (error_code IN (
    'FILE_ENCODING', 'FILE_EMPTY', 'FILE_TOO_LARGE', 'HEADER_MISMATCH', 'WRONG_FIELD_COUNT',
    'REQUIRED_FIELD_MISSING', 'FIELD_TOO_LONG', 'INVALID_STUDENT_ID', 'INVALID_GRADE',
    'INVALID_USERNAME', 'INVALID_PASSWORD', 'INVALID_EMAIL', 'INVALID_STATUS',
    'INVALID_CHARACTERS', 'PASSWORD_REQUIRED', 'SCHOOL_NOT_FOUND', 'DUPLICATE_STUDENT_ID',
    'DUPLICATE_USERNAME', 'USERNAME_TAKEN', 'STUDENT_EXISTS', 'STUDENT_NOT_FOUND',
    'NO_LICENSE_AVAILABLE', 'GRADE_NOT_PARTICIPATING'));
