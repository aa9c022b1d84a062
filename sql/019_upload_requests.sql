-- The uploads waiting for a run of upload_job, in the order they were requested.
--
-- Two kinds of request:
-- * a district sensor's: the district's students.csv settled; file_size and file_mtime
--   are what the sensor saw (the run claims incoming/students.csv only if they still match);
-- * reprocess_uploads' (the launchpad job): an upload to run again; reprocess_run is the id of
--   the Dagster run that asked (its runs are tagged eams/reprocess with it), allow_older its
--   decision.
-- The eams_upload_requests sensor of the code location serving the district requests one run
-- per row, in request_id order, and remembers the last request_id it handed out in its cursor.
-- The district sensors themselves target no job: 2,000 sensors targeting the upload assets'
-- job make the Dagster UI load 2,000 sensor states on every asset page.
-- An upload need not have a row in uploads (a request comes first; a run that died after
-- archiving an upload, before recording it, leaves none): the key and the district suffice.

CREATE TABLE upload_requests (
    request_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id   bigint NOT NULL REFERENCES districts ON DELETE CASCADE,
    upload_key    text NOT NULL CHECK (upload_key ~ '^[A-Za-z0-9_-]{1,32}-[0-9]{8}T[0-9]{12}Z$'),
    file_size     bigint CHECK (file_size >= 0),
    file_mtime    bigint,
    reprocess_run text CHECK (reprocess_run <> ''),
    allow_older   boolean NOT NULL DEFAULT false,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT upload_requests_file_stat CHECK ((file_size IS NULL) = (file_mtime IS NULL)),
    CONSTRAINT upload_requests_one_kind CHECK ((reprocess_run IS NULL) <> (file_size IS NULL)),
    CONSTRAINT upload_requests_sensor_not_older CHECK (reprocess_run IS NOT NULL OR NOT allow_older)
);
-- a sensor requests an upload once; a reprocess run asks for an upload once (its retry asks
-- for nothing more)
CREATE UNIQUE INDEX upload_requests_by_sensor ON upload_requests (upload_key)
    WHERE reprocess_run IS NULL;
CREATE UNIQUE INDEX upload_requests_by_reprocess ON upload_requests (reprocess_run, upload_key)
    WHERE reprocess_run IS NOT NULL;
