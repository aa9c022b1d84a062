"""Retention: which stored copies of uploads may go, as pure decisions (clock injected).

Three places keep something of an upload:

- ``processed/students_<key>.csv`` on the district's SFTP site: the raw file, with every
  clear-text password. It goes once the upload is safely in the encrypted archive and its
  outcome is recorded, after ``processed_days`` (0: as soon as the run succeeds);
- the encrypted archive ``<district>/<key>.csv.fernet`` (the basis of re-runs, reverts and
  backfills): after ``archive_days``;
- ``errors/students_errors_<upload id>.csv`` on the SFTP site, and the reports of
  ``reports/`` (``students_check_<upload key>.csv`` of a check drop, an upload's change
  reports ``students_changes_<upload key>[_revert].csv``): after
  ``error_file_days`` (counted from the time the file was written).

Nothing an unfinished upload (``received``: a run is on it or crashed) or a ``held`` one
needs is ever removed, nor a file of an upload the database does not know: those are
left for an operator.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from eams_pipeline.core.names import ERROR_FILE_NAME, PROCESSED_NAME, REPORT_FILE_NAME
from eams_pipeline.core.outcome import UploadStatus

# statuses whose files must stay: the upload is not finished, or waits for an operator
KEEP_STATUSES = frozenset({UploadStatus.RECEIVED, UploadStatus.HELD})


@dataclass(frozen=True)
class RetentionSettings:
    processed_days: int = 0
    archive_days: int = 400
    error_file_days: int = 90


@dataclass(frozen=True)
class KnownUpload:
    """What the database says of an upload."""

    upload_id: int
    key: str
    status: str
    received_at: dt.datetime
    archived: bool  # the encrypted archive holds its bytes


@dataclass(frozen=True)
class StoredFile:
    name: str
    mtime: dt.datetime  # when it was written (SFTP or archive file time)


def finished(upload: KnownUpload | None) -> bool:
    """Its outcome is recorded and it is neither unfinished nor held."""
    return upload is not None and upload.status not in KEEP_STATUSES


def raw_removable(upload: KnownUpload | None, now: dt.datetime, days: int) -> bool:
    """May the raw file in processed/ go? Finished, in the archive (or rejected: nothing
    reads a rejected file again, and one too large to download is never archived; or a
    check drop, never archived: its check is recorded), and older than ``days``."""
    return (
        finished(upload)
        and upload is not None
        and (upload.archived or upload.status in (UploadStatus.REJECTED, UploadStatus.CHECKED))
        and now - upload.received_at >= dt.timedelta(days=days)
    )


def processed_to_remove(
    files: Iterable[StoredFile],
    uploads: Mapping[str, KnownUpload],
    now: dt.datetime,
    days: int,
) -> list[str]:
    """Names in processed/ to remove (``uploads`` by upload key)."""
    out = []
    for f in files:
        match = PROCESSED_NAME.fullmatch(f.name)
        if match and raw_removable(uploads.get(match["key"]), now, days):
            out.append(f.name)
    return sorted(out)


def error_files_to_remove(
    files: Iterable[StoredFile],
    uploads_by_id: Mapping[int, KnownUpload],
    now: dt.datetime,
    days: int,
) -> list[str]:
    """Names in errors/ to remove: the upload's error files older than ``days``."""
    out = []
    for f in files:
        match = ERROR_FILE_NAME.fullmatch(f.name)
        if (
            match
            and finished(uploads_by_id.get(int(match["id"])))
            and now - f.mtime >= dt.timedelta(days=days)
        ):
            out.append(f.name)
    return sorted(out)


def report_files_to_remove(
    files: Iterable[StoredFile],
    uploads: Mapping[str, KnownUpload],
    now: dt.datetime,
    days: int,
) -> list[str]:
    """Names in reports/ to remove (``uploads`` by upload key): an upload's or a check
    drop's reports (``students_<kind>_<upload key>.csv``) older than ``days``, as its
    error files (they list students too)."""
    out = []
    for f in files:
        match = REPORT_FILE_NAME.fullmatch(f.name)
        if (
            match
            and finished(uploads.get(match["key"]))
            and now - f.mtime >= dt.timedelta(days=days)
        ):
            out.append(f.name)
    return sorted(out)


def archive_to_remove(
    keys: Iterable[str],
    uploads: Mapping[str, KnownUpload],
    now: dt.datetime,
    days: int,
) -> list[str]:
    """Upload keys whose archive copy may go: finished and received over ``days`` ago."""
    out = []
    for key in keys:
        upload = uploads.get(key)
        if (
            finished(upload)
            and upload is not None
            and now - upload.received_at >= dt.timedelta(days=days)
        ):
            out.append(key)
    return sorted(out)
