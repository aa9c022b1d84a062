"""A check drop: a district's ``check/students.csv`` run through the engine as a dry run
against its students as they are now (the same reading, validation, plan, license
accounting and change guard as an upload), applied to nothing.

Nothing is applied, no password is hashed and no student data is stored: the check is
recorded as an upload with status ``checked`` (counts, error codes, the guard's verdict and
figures, what the file would have come to: ``checked_as``), its error lines go only to the
check report on the district's SFTP site (the error file's columns), and the district's
contacts get a "check result" email. A check never supersedes nor is superseded, is never
held, and takes no lock an upload waits for (``process_upload(dry_run=True)``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import replace
from email.message import EmailMessage

import psycopg

from eams_pipeline.core.error_file import render_error_file
from eams_pipeline.core.notifications import build_check_email
from eams_pipeline.core.outcome import UploadResult, UploadStatus
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.districts import District, UnknownDistrict, get_district
from eams_pipeline.services.process import Engine, Upload, process_upload
from eams_pipeline.services.progress import Progress


class NotACheck(ValueError):
    """The key names an upload (or anything else) recorded with another status."""


def recorded_check(conn: psycopg.Connection, upload_key: str) -> db_uploads.UploadRow | None:
    """The check recorded under this key, None when there is none yet. Raises
    :class:`NotACheck` when the key is an upload's."""
    row = db_uploads.get_upload(conn, upload_key)
    if row is not None and row.status != UploadStatus.CHECKED:
        raise NotACheck(f"{upload_key} is an upload ({row.status}), not a check drop")
    return row


def run_check(
    conn: psycopg.Connection,
    upload: Upload,
    engine: Engine,
    *,
    progress: Progress | None = None,
) -> UploadResult:
    """The engine's dry run of the checked file (nothing written, hashed or locked). The
    result's status is what the file would come to as an upload: processed,
    partially_processed, rejected or held (its guard_trip: the rule, with the figures)."""
    if upload.key is None:
        raise ValueError("a check drop has a key (the district sensor's)")
    return process_upload(conn, upload, engine, dry_run=True, progress=progress)


def check_report(result: UploadResult) -> bytes:
    """The check report: the error file's columns, one line per error, only the header when
    the file is clean."""
    return render_error_file(result.errors)


def record_check(
    conn: psycopg.Connection,
    upload: Upload,
    result: UploadResult,
    *,
    report_file: str,
) -> db_uploads.UploadRow:
    """Record the check (status checked) once its report is published; a second call keeps
    the first record."""
    if upload.key is None:
        raise ValueError("a check drop has a key (the district sensor's)")
    with conn.transaction():
        district = get_district(conn, upload.district)
        if district is None:
            raise UnknownDistrict(f"unknown district {upload.district!r}")
        return db_uploads.record_check(
            conn,
            district.district_id,
            upload.key,
            file_name=upload.file_name,
            content_sha256=hashlib.sha256(upload.data).hexdigest(),
            received_at=upload.received_at or dt.datetime.now(dt.UTC),
            result=result,
            report_file=report_file,
        )


def checked_result(conn: psycopg.Connection, row: db_uploads.UploadRow) -> UploadResult:
    """What the recorded check found, as the dry run said it: its status is what the file
    would have come to (``checked_as``); only a file-level error's line is kept."""
    if row.checked_as is None:
        raise NotACheck(f"{row.upload_key} is not a check drop")
    recorded = db_uploads.recorded_result(conn, row, "")
    return replace(recorded, status=row.checked_as, already_applied=False)


def check_result_email(
    district: District,
    row: db_uploads.UploadRow,
    result: UploadResult,
    *,
    report_path: str,
    sender: str,
) -> tuple[EmailMessage, tuple[str, ...]]:
    """The "check result" email to the district's contacts and its recipients: the counts
    the file would apply, the change guard's verdict, the error codes and where the report
    is (``report_path``, as the district sees it on its SFTP site)."""
    file_error = result.file_error
    summary = result.summary(report_path)
    summary["district"] = district.code
    message = build_check_email(
        district_code=district.code,
        district_name=district.name,
        contacts=list(district.contacts),
        sender=sender,
        upload_key=row.upload_key,
        summary=summary,
        report_path=report_path,
        file_error=f"{file_error.code}: {file_error.message}" if file_error else None,
    )
    return message, tuple(district.contacts)
