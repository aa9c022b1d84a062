"""Retention in Dagster: the raw upload leaves processed/ once safe, and a daily job
enforces the retention of processed/, the encrypted archive and errors/ (decisions in
:mod:`eams_pipeline.core.retention`; this module only lists, removes and reports).

    remove_raw_upload   called at the end of an upload's run (district_email) when
                        EAMS_PROCESSED_RETENTION_DAYS is 0
    retention_job       op job ``enforce_retention``; metadata: removed paths and counts
    retention_schedule  daily (EAMS_RETENTION_CRON, default 04:30 UTC)
"""

import datetime as dt
from collections.abc import Callable

import dagster as dg

from eams_pipeline import config
from eams_pipeline.core.retention import (
    KnownUpload,
    RetentionSettings,
    StoredFile,
    archive_to_remove,
    error_files_to_remove,
    processed_to_remove,
    raw_removable,
)
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.districts import District, list_districts
from eams_pipeline.io.archive import Archive
from eams_pipeline.io.sftp import ERRORS, PROCESSED, SftpError, SftpSession
from eams_pipeline.orchestration.resources import ArchiveResource, DatabaseResource, SftpResource

RETENTION_JOB_NAME = "retention_job"
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def known_uploads(
    rows: list[db_uploads.UploadRow], archive: Archive, code: str
) -> list[KnownUpload]:
    archived = set(archive.keys(code))
    return [
        KnownUpload(
            upload_id=r.upload_id,
            key=r.upload_key,
            status=str(r.status),
            received_at=r.received_at,
            archived=r.upload_key in archived,
        )
        for r in rows
    ]


def remove_raw_upload(
    session: SftpSession,
    upload: KnownUpload,
    processed_name: str,
    now: dt.datetime,
    days: int,
) -> bool:
    """Remove ``processed/<processed_name>`` if retention allows it now; True if removed."""
    if not raw_removable(upload, now, days):
        return False
    return session.remove(PROCESSED, processed_name)


def _stored(files) -> list[StoredFile]:
    return [StoredFile(f.name, dt.datetime.fromtimestamp(f.mtime, dt.UTC)) for f in files]


def enforce_district(
    district: District,
    uploads: list[KnownUpload],
    session: SftpSession | None,
    archive: Archive,
    settings: RetentionSettings,
    now: dt.datetime,
) -> dict[str, list[str]]:
    """Apply retention to one district; returns what was removed, by place."""
    by_key = {u.key: u for u in uploads}
    by_id = {u.upload_id: u for u in uploads}
    removed: dict[str, list[str]] = {"processed": [], "errors": [], "archive": []}
    if session is not None:
        root = district.sftp_root.rstrip("/")
        for name in processed_to_remove(
            _stored(session.list_dir(PROCESSED)), by_key, now, settings.processed_days
        ):
            if session.remove(PROCESSED, name):
                removed["processed"].append(f"{root}/{PROCESSED}/{name}")
        for name in error_files_to_remove(
            _stored(session.list_dir(ERRORS)), by_id, now, settings.error_file_days
        ):
            if session.remove(ERRORS, name):
                removed["errors"].append(f"{root}/{ERRORS}/{name}")
    # the archive goes last: a raw file in processed/ is only removed while archived
    for key in archive_to_remove(archive.keys(district.code), by_key, now, settings.archive_days):
        if archive.remove(district.code, key):
            removed["archive"].append(str(archive.path_for(district.code, key)))
    return removed


def build_retention_job(clock: Clock = _utcnow) -> dg.JobDefinition:
    @dg.op(
        name="enforce_retention",
        description=(
            "Removes raw uploads from processed/ (EAMS_PROCESSED_RETENTION_DAYS), error files "
            "from errors/ (EAMS_ERROR_FILE_RETENTION_DAYS) and encrypted archive copies "
            "(EAMS_ARCHIVE_RETENTION_DAYS); never anything of a received or held upload."
        ),
    )
    def enforce_retention(
        context: dg.OpExecutionContext,
        db: DatabaseResource,
        sftp: SftpResource,
        archive: ArchiveResource,
    ) -> dict[str, list[str]]:
        settings = config.retention_settings()
        store = archive.get()
        now = clock()
        totals: dict[str, list[str]] = {"processed": [], "errors": [], "archive": []}
        failures = []
        with db.connect() as conn:
            districts = list_districts(conn)
            for district in districts:
                uploads = known_uploads(
                    db_uploads.uploads_of_district(conn, district.district_id), store, district.code
                )
                try:
                    if district.sftp is None:
                        removed = enforce_district(district, uploads, None, store, settings, now)
                    else:
                        with sftp.session(district.sftp) as session:
                            removed = enforce_district(
                                district, uploads, session, store, settings, now
                            )
                except SftpError as exc:  # the other districts still get their retention
                    failures.append(f"{district.code}: {exc}")
                    context.log.error(f"retention for district {district.code} failed: {exc}")
                    continue
                for name in removed["processed"]:
                    db_uploads.mark_raw_removed(conn, _key_of(name))
                conn.commit()
                for place, paths in removed.items():
                    totals[place].extend(paths)
                if any(removed.values()):
                    context.log.info(
                        f"district {district.code}: removed "
                        + ", ".join(f"{len(v)} {k}" for k, v in removed.items())
                    )
        context.add_output_metadata(
            {
                "now": now.isoformat(),
                "processed_retention_days": settings.processed_days,
                "archive_retention_days": settings.archive_days,
                "error_file_retention_days": settings.error_file_days,
                "districts": len(districts),
                **{f"removed_{k}": dg.MetadataValue.int(len(v)) for k, v in totals.items()},
                "removed": dg.MetadataValue.json(totals),
                "failed_districts": dg.MetadataValue.json(failures),
            }
        )
        if failures:
            raise dg.Failure(
                f"retention failed for {len(failures)} district(s): {'; '.join(failures)}",
                metadata={"removed": dg.MetadataValue.json(totals)},
            )
        return totals

    @dg.job(
        name=RETENTION_JOB_NAME,
        description="Daily retention of raw uploads, error files and the encrypted archive.",
    )
    def retention_job() -> None:
        enforce_retention()

    return retention_job


def _key_of(processed_path: str) -> str:
    name = processed_path.rsplit("/", 1)[-1]
    return name[len("students_") : -len(".csv")]


def build_retention_schedule(job: dg.JobDefinition) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="retention_daily",
        job=job,
        cron_schedule=config.retention_cron(),
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs retention_job daily (EAMS_RETENTION_CRON).",
    )
