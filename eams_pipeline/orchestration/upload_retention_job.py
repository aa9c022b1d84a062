"""Retention in Dagster: the raw upload leaves processed/ once safe, and a daily job
enforces the retention of processed/, the encrypted archive and errors/ (decisions in
:mod:`eams_pipeline.core.upload_retention`; this module only lists, removes and reports).

    remove_raw_upload   called at the end of an upload's run (district_email) when
                        EAMS_PROCESSED_RETENTION_DAYS is 0
    raw_differs         before any raw file goes: is it still the archived copy? A client
                        that kept writing after the claim makes it differ: it is kept and
                        the operators are alerted once (alert_raw_kept)
    retention_job       op job ``enforce_retention``; metadata: removed paths and counts
    retention_schedule  daily (EAMS_RETENTION_CRON, default 04:30 UTC)
"""

import datetime as dt
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import psycopg

from eams_pipeline import config
from eams_pipeline.core.names import ERRORS, PROCESSED, REPORTS
from eams_pipeline.core.notifications import build_raw_file_kept_email
from eams_pipeline.core.upload_retention import (
    KnownUpload,
    RetentionSettings,
    StoredFile,
    archive_to_remove,
    error_files_to_remove,
    processed_to_remove,
    raw_removable,
    report_files_to_remove,
)
from eams_pipeline.db import district_alerts as db_alerts
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.districts import District, list_districts
from eams_pipeline.io.archive import Archive, sha256
from eams_pipeline.io.sftp import SftpError, SftpFileNotFoundError, SftpSession
from eams_pipeline.orchestration.resources import (
    ArchiveResource,
    DatabaseResource,
    SftpResource,
    SmtpResource,
)

RETENTION_JOB_NAME = "retention_job"
RAW_FILE_KEPT = "raw_file_kept"  # district_alerts kind: the operators were told (subject: key)
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


@dataclass(frozen=True)
class RawKept:
    """A raw file kept in processed/: it is not the archived copy of its upload."""

    upload_key: str
    path: str  # relative to the district's root
    archived_size: int
    archived_sha256: str
    raw_size: int
    raw_sha256: str | None  # None: not hashed (the sizes differ)


def raw_differs(
    session: SftpSession, archive: Archive, code: str, upload: KnownUpload, processed_name: str
) -> RawKept | None:
    """Is ``processed/<processed_name>`` no longer the bytes the upload's archive holds (its
    size, then its SHA-256, streamed)? None when it is the same, is gone, or the upload was
    never archived (refused unread: FILE_TOO_LARGE). Decrypting the archive copy also
    proves it readable before the only other copy goes."""
    if not upload.archived:
        return None
    rel = f"{PROCESSED}/{processed_name}"
    try:
        raw = session.stat(rel)
    except SftpFileNotFoundError:
        return None
    archived = archive.load(str(archive.path_for(code, upload.key)))
    digest = sha256(archived)
    kept = RawKept(upload.key, rel, len(archived), digest, raw.size, None)
    if raw.size != len(archived):
        return kept
    try:
        size, raw_digest = session.sha256(rel)
    except SftpFileNotFoundError:
        return None
    if size == len(archived) and hmac.compare_digest(raw_digest, digest):
        return None
    return RawKept(upload.key, rel, len(archived), digest, size, raw_digest)


@dataclass(frozen=True)
class RawRemoval:
    removed: bool
    kept: RawKept | None = None  # not removed: it differs from the archived copy


def remove_raw_upload(
    session: SftpSession,
    archive: Archive,
    code: str,
    upload: KnownUpload,
    processed_name: str,
    now: dt.datetime,
    days: int,
) -> RawRemoval:
    """Remove ``processed/<processed_name>`` if retention allows it now and it is still the
    archived copy (:func:`raw_differs`); else keep it."""
    if not raw_removable(upload, now, days):
        return RawRemoval(False)
    kept = raw_differs(session, archive, code, upload, processed_name)
    if kept is not None:
        return RawRemoval(False, kept)
    return RawRemoval(session.remove(PROCESSED, processed_name))


def alert_raw_kept(
    conn: psycopg.Connection,
    smtp: SmtpResource,
    district: District,
    kept: RawKept,
    log: Callable[[str], None],
) -> str:
    """Tell the operators, once per upload (district_alerts, recorded in the transaction
    that sends it), that a raw file was kept. Never raises: the file is kept either way,
    and the next removal attempt (retention_job) tries the alert again."""
    where = f"{district.sftp_root.rstrip('/')}/{kept.path}"
    text = (
        f"RAW FILE KEPT: {where} ({kept.raw_size} bytes) is not the archived copy of upload "
        f"{kept.upload_key} ({kept.archived_size} bytes)"
    )
    operators = config.operator_emails()
    if not operators:
        log(f"{text}; EAMS_OPERATOR_EMAILS is empty: no operator told")
        return text + "; no operator to tell"
    message = build_raw_file_kept_email(
        operators=operators,
        sender=smtp.sender,
        district_code=district.code,
        district_name=district.name,
        upload_key=kept.upload_key,
        path=where,
        archived_size=kept.archived_size,
        archived_sha256=kept.archived_sha256,
        raw_size=kept.raw_size,
        raw_sha256=kept.raw_sha256,
    )
    try:
        with conn.transaction():
            claimed = db_alerts.claim_alert(
                conn, district.district_id, RAW_FILE_KEPT, kept.upload_key, text
            )
            if claimed:
                smtp.send(message)
    except Exception as exc:  # the file is kept anyway; the next attempt alerts again
        log(f"{text}; the operators' alert could not be sent: {type(exc).__name__}: {exc}")
        return text + "; operator alert NOT sent"
    log(f"{text}: kept" + (f", operators alerted ({len(operators)})" if claimed else ""))
    return text + ("; operators alerted" if claimed else "; operators alerted before")


def _stored(files) -> list[StoredFile]:
    return [StoredFile(f.name, dt.datetime.fromtimestamp(f.mtime, dt.UTC)) for f in files]


def enforce_district(
    district: District,
    uploads: list[KnownUpload],
    session: SftpSession | None,
    archive: Archive,
    settings: RetentionSettings,
    now: dt.datetime,
) -> tuple[dict[str, list[str]], list[RawKept]]:
    """Apply retention to one district; returns what was removed, by place, and the raw
    files kept because they differ from their archived copy."""
    by_key = {u.key: u for u in uploads}
    by_id = {u.upload_id: u for u in uploads}
    removed: dict[str, list[str]] = {"processed": [], "errors": [], "reports": [], "archive": []}
    kept: list[RawKept] = []
    if session is not None:
        root = district.sftp_root.rstrip("/")
        for name in processed_to_remove(
            _stored(session.list_dir(PROCESSED)), by_key, now, settings.processed_days
        ):
            differs = raw_differs(session, archive, district.code, by_key[_key_of(name)], name)
            if differs is not None:
                kept.append(differs)
            elif session.remove(PROCESSED, name):
                removed["processed"].append(f"{root}/{PROCESSED}/{name}")
        for name in error_files_to_remove(
            _stored(session.list_dir(ERRORS)), by_id, now, settings.error_file_days
        ):
            if session.remove(ERRORS, name):
                removed["errors"].append(f"{root}/{ERRORS}/{name}")
        for name in report_files_to_remove(
            _stored(session.list_dir(REPORTS)), by_key, now, settings.error_file_days
        ):
            if session.remove(REPORTS, name):
                removed["reports"].append(f"{root}/{REPORTS}/{name}")
    # the archive goes last: a raw file in processed/ is only removed while archived
    for key in archive_to_remove(archive.keys(district.code), by_key, now, settings.archive_days):
        if archive.remove(district.code, key):
            removed["archive"].append(str(archive.path_for(district.code, key)))
    return removed, kept


def build_retention_job(clock: Clock = _utcnow) -> dg.JobDefinition:
    @dg.op(
        name="enforce_retention",
        description=(
            "Removes raw uploads from processed/ (EAMS_PROCESSED_RETENTION_DAYS), error files "
            "from errors/ and reports from reports/ (EAMS_ERROR_FILE_RETENTION_DAYS) and "
            "encrypted archive copies "
            "(EAMS_ARCHIVE_RETENTION_DAYS); never anything of a received or held upload."
        ),
    )
    def enforce_retention(
        context: dg.OpExecutionContext,
        db: DatabaseResource,
        sftp: SftpResource,
        archive: ArchiveResource,
        smtp: SmtpResource,
    ) -> dict[str, list[str]]:
        settings = config.retention_settings()
        store = archive.get()
        now = clock()
        totals: dict[str, list[str]] = {"processed": [], "errors": [], "reports": [], "archive": []}
        failures = []
        kept_notes: list[str] = []
        with db.connect() as conn:
            districts = list_districts(conn)
            for district in districts:
                uploads = known_uploads(
                    db_uploads.uploads_of_district(conn, district.district_id), store, district.code
                )
                try:
                    if district.sftp is None:
                        removed, kept = enforce_district(
                            district, uploads, None, store, settings, now
                        )
                    else:
                        with sftp.session(district.sftp) as session:
                            removed, kept = enforce_district(
                                district, uploads, session, store, settings, now
                            )
                except SftpError as exc:  # the other districts still get their retention
                    failures.append(f"{district.code}: {exc}")
                    context.log.error(f"retention for district {district.code} failed: {exc}")
                    continue
                for name in removed["processed"]:
                    db_uploads.mark_raw_removed(conn, _key_of(name))
                conn.commit()
                warn = context.log.warning
                kept_notes += [alert_raw_kept(conn, smtp, district, k, warn) for k in kept]
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
                "kept_raw_files": dg.MetadataValue.json(kept_notes),
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
