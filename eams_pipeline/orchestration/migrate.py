"""Moving a Dagster instance from one partition per upload to the district partitions.

Before, every upload was a partition of the dynamic partitions ``uploads`` and its runs
carried the upload key only as ``dagster/partition``. What stays as it was: those runs,
their logs and their materializations (partition: the upload key) in the asset's events,
and the ``uploads`` keys in storage (no longer read). What the pipeline reads of them
without any migration: the email already sent and the run that claimed a file are found by
the upload key in either tag (:func:`.partitions.runs_of_upload`), so a reprocessed old
upload is not emailed twice.

:func:`tag_legacy_upload_runs` (``eams dagster migrate-runs``) gives those runs the tags
new runs carry, ``eams/upload_key`` (and ``eams/district`` if missing), so that the runs
page's filter by upload key finds old and new runs alike. Idempotent and resumable: a run
already tagged is left alone. An old upload is run again with ``reprocess_uploads`` (by
its key): a re-execution of an old run would run it in the model it was made in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from eams_pipeline.core.names import UploadRef
from eams_pipeline.orchestration.jobs import UPLOAD_JOB_NAME
from eams_pipeline.orchestration.partitions import (
    DISTRICT_TAG,
    PARTITION_TAG,
    UPLOAD_KEY_TAG,
    upload_key_of_run,
)

DEFAULT_BATCH = 500


@dataclass
class RunsMigration:
    scanned: int = 0  # runs of upload_job read
    tagged: int = 0  # runs of the model before, tagged now
    already_tagged: int = 0  # runs of the new model or tagged by an earlier migration
    without_upload: int = 0  # no upload key in their tags (e.g. a launchpad run that failed)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def tag_legacy_upload_runs(
    instance: dg.DagsterInstance,
    *,
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
    progress: Callable[[RunsMigration], None] | None = None,
) -> RunsMigration:
    """Tag every run of ``upload_job`` made under the partitions per upload with its upload
    key and district (read from its partition key); newest first, ``batch`` runs a page."""
    report = RunsMigration()
    cursor: str | None = None
    while True:
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=UPLOAD_JOB_NAME), limit=batch, cursor=cursor
        )
        if not records:
            break
        for record in records:
            run = record.dagster_run
            report.scanned += 1
            if UPLOAD_KEY_TAG in run.tags:
                report.already_tagged += 1
                continue
            key = upload_key_of_run(run.tags)
            if key is None or run.tags.get(PARTITION_TAG) != key:
                report.without_upload += 1
                continue
            tags = {UPLOAD_KEY_TAG: key}
            if DISTRICT_TAG not in run.tags:
                tags[DISTRICT_TAG] = UploadRef.parse(key).district
            if not dry_run:
                instance.add_run_tags(run.run_id, tags)
            report.tagged += 1
        cursor = records[-1].dagster_run.run_id
        if progress is not None:
            progress(report)
    return report
