-- Reprocessing historical uploads from the Dagster UI: the launchpad job reprocess_uploads
-- records here which uploads to run again; the reprocess sensor of the code location that
-- serves the district requests one run of upload_job per row, in item_id order (the
-- uploads of a district in the order they were received), and remembers the last item_id
-- it handed out in its cursor. An upload need not have a row in uploads (a run that died
-- after archiving it, before recording it): the key and the district are enough.

CREATE TABLE reprocess_requests (
    item_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- who asked: the run id of reprocess_uploads (its runs are tagged eams/reprocess)
    requested_by text NOT NULL CHECK (requested_by <> ''),
    district_id  bigint NOT NULL REFERENCES districts ON DELETE CASCADE,
    upload_key   text NOT NULL CHECK (upload_key ~ '^[A-Za-z0-9_-]{1,32}-[0-9]{8}T[0-9]{12}Z$'),
    allow_older  boolean NOT NULL DEFAULT false,
    requested_at timestamptz NOT NULL DEFAULT now(),
    -- a retried reprocess_uploads run asks for nothing twice
    UNIQUE (requested_by, upload_key)
);
