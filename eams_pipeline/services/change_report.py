"""The change report of an applied upload, or of its revert (core.change_file): built from
the history the apply wrote (one query, db.change_history), the same for the Dagster job
(the change_report asset publishes it to the district's reports/) and the CLI
(`eams process --changes-out`, `eams uploads revert --changes-dir`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from eams_pipeline.core.change_file import render_change_file
from eams_pipeline.core.names import change_report_name
from eams_pipeline.core.outcome import APPLIED_STATUSES, UploadStatus
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.change_history import change_lines


class NoChangeReport(LookupError):
    """The upload has no such report: it was not applied (or not reverted)."""


@dataclass(frozen=True)
class ChangeReport:
    upload_key: str
    revert: bool
    name: str  # students_changes_<upload key>[_revert].csv (in reports/)
    content: bytes
    lines: int
    changes: dict[str, int]  # lines per Change
    seconds: float  # the query and the rendering


def reports_of(status: UploadStatus) -> tuple[bool, ...]:
    """The change reports an upload of this status has: its apply's (False) when it was
    applied, and its revert's (True) too when it was reverted."""
    if status in APPLIED_STATUSES:
        return (False,)
    if status == UploadStatus.REVERTED:
        return (False, True)
    return ()


def build_change_report(
    conn: psycopg.Connection, upload_key: str, *, revert: bool = False
) -> ChangeReport:
    """The change report of the upload (`revert`: of its revert), read in one statement."""
    start = time.perf_counter()
    upload = db_uploads.get_upload(conn, upload_key)
    if upload is None:
        raise NoChangeReport(f"no upload {upload_key}")
    if revert not in reports_of(upload.status):
        what = "reverted" if revert else "applied"
        raise NoChangeReport(
            f"upload {upload_key} is {upload.status}: it was not {what}, no change report"
        )
    rendered = render_change_file(change_lines(conn, upload.upload_id, revert=revert))
    return ChangeReport(
        upload_key=upload_key,
        revert=revert,
        name=change_report_name(upload_key, revert=revert),
        content=rendered.content,
        lines=rendered.lines,
        changes=rendered.changes,
        seconds=time.perf_counter() - start,
    )
