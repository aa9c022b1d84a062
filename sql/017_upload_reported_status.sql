-- Decisions made outside an upload's own Dagster run (`eams uploads approve|discard|revert`,
-- the revert job, a newer upload superseding a held one) are reflected in Dagster by a
-- sensor (orchestration/decisions.py): it asks for a follow-up run of the upload's
-- partition, which re-evaluates the change_guard check, updates the runs' eams/outcome tag,
-- republishes the error file, emails the district and removes the raw file.
--
-- reported_status: the status the upload's Dagster partition last showed (set by its run's
-- upload_outcome step). NULL: the upload never ran in Dagster (`eams process`): the CLI
-- itself emails the district of those. The sensor reads only the uploads whose status moved
-- on since (a partial index: at most a handful of rows at any time).

-- (no CHECK of its own: it only ever holds a value copied from `status`, checked there; one
-- list of statuses to keep in step with UploadStatus)
ALTER TABLE uploads ADD COLUMN reported_status text;

-- uploads that ran in Dagster before this migration (only Dagster keeps an archive copy):
-- their partitions show their current status
UPDATE uploads SET reported_status = status WHERE archive_path IS NOT NULL;

CREATE INDEX uploads_unreported_idx ON uploads (upload_id)
    WHERE reported_status IS NOT NULL AND reported_status <> status;
