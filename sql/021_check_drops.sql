-- Check drops: a district may put students.csv in check/ (beside incoming/) to have it
-- validated by the engine as a dry run against the current database, nothing applied.
--
-- * uploads.status gains 'checked' (eams_pipeline.core.outcome.UploadStatus.CHECKED; a
--   test checks the list equals the enum): a check is recorded once, at its end, with the
--   counts it would have applied, its error codes and the change guard's verdict and
--   figures. Its error lines are not stored (they name students): they are in the report
--   the check publishes to the district's reports/ directory.
-- * upload_requests.kind says which job a request starts: 'upload' (upload_job) or
--   'check' (check_upload). A check is requested only by a district sensor.

ALTER TABLE uploads DROP CONSTRAINT uploads_status_check;
ALTER TABLE uploads ADD CONSTRAINT uploads_status_check CHECK (status IN (
    'received', 'processed', 'partially_processed', 'rejected', 'superseded',
    'held', 'discarded', 'reverted', 'checked'));

ALTER TABLE upload_requests ADD COLUMN kind text NOT NULL DEFAULT 'upload'
    CONSTRAINT upload_requests_kind_check CHECK (kind IN ('upload', 'check'));
ALTER TABLE upload_requests ADD CONSTRAINT upload_requests_check_by_sensor
    CHECK (kind = 'upload' OR reprocess_run IS NULL);

-- what the checked file would have come to as an upload: processed, partially_processed,
-- rejected, or held by the change guard (guard_trip then holds the rule and its figures)
ALTER TABLE uploads ADD COLUMN checked_as text
    CONSTRAINT uploads_checked_as_check
    CHECK (checked_as IN ('processed', 'partially_processed', 'rejected', 'held'));
ALTER TABLE uploads ADD CONSTRAINT uploads_checked_has_verdict
    CHECK ((status = 'checked') = (checked_as IS NOT NULL));
