"""The uploads table: one row per upload, its business key, and what it came to."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from eams_pipeline.core.errors import ErrorCode, error_frame
from eams_pipeline.core.outcome import (
    APPLIED_STATUSES,
    COUNT_KEYS,
    SETTLED_STATUSES,
    UploadResult,
    UploadStatus,
)
from eams_pipeline.core.reading import FileRejected


@dataclass(frozen=True)
class UploadRow:
    upload_id: int
    upload_key: str
    status: UploadStatus
    received_at: dt.datetime
    counts: dict[str, int]
    error_codes: dict[str, int]
    error_file: str | None
    content_sha256: str | None
    archive_path: str | None
    district_id: int = 0
    guard_trip: dict | None = None
    guard_figures: dict | None = None
    deactivated_missing: int = 0
    # the review of a held upload (approved | discarded, by whom, when) and its revert
    decision: str | None = None
    decided_by: str | None = None
    decided_at: dt.datetime | None = None
    reverted_by: str | None = None
    reverted_at: dt.datetime | None = None
    revert_counts: dict | None = None
    # the status its Dagster partition last showed (None: never run in Dagster)
    reported_status: str | None = None
    # a check drop (status checked): what the file would have come to as an upload
    checked_as: UploadStatus | None = None

    @property
    def is_final(self) -> bool:
        """Does a plain re-run leave it alone? (held: only an approval applies it; a held
        upload that a newer one superseded stays unapplied too)"""
        return self.status in SETTLED_STATUSES or self.was_held_superseded

    @property
    def was_held_superseded(self) -> bool:
        return self.status == UploadStatus.SUPERSEDED and self.guard_trip is not None

    @property
    def approvable(self) -> bool:
        return self.status == UploadStatus.HELD or self.was_held_superseded


_SELECT = f"""SELECT upload_id, upload_key, status, received_at, {", ".join(COUNT_KEYS)},
                     error_codes, error_file, content_sha256, archive_path, district_id,
                     guard_trip, guard_figures, deactivated_missing, decision, decided_by,
                     decided_at, reverted_by, reverted_at, revert_counts, reported_status,
                     checked_as
              FROM uploads"""


def _row(r: tuple) -> UploadRow:
    counts = dict(zip(COUNT_KEYS, r[4:11], strict=True))
    return UploadRow(
        upload_id=r[0],
        upload_key=r[1],
        status=UploadStatus(r[2]),
        received_at=r[3],
        counts={k: int(v or 0) for k, v in counts.items()},
        error_codes=r[11] or {},
        error_file=r[12],
        content_sha256=r[13],
        archive_path=r[14],
        district_id=r[15],
        guard_trip=r[16],
        guard_figures=r[17],
        deactivated_missing=int(r[18] or 0),
        decision=r[19],
        decided_by=r[20],
        decided_at=r[21],
        reverted_by=r[22],
        reverted_at=r[23],
        revert_counts=r[24],
        reported_status=r[25],
        checked_as=UploadStatus(r[26]) if r[26] else None,
    )


def get_upload(conn: psycopg.Connection, upload_key: str) -> UploadRow | None:
    r = conn.execute(_SELECT + " WHERE upload_key = %s", (upload_key,)).fetchone()
    return _row(r) if r else None


def ensure_upload(
    conn: psycopg.Connection,
    district_id: int,
    upload_key: str,
    *,
    file_name: str,
    content_sha256: str,
    received_at: dt.datetime,
    archive_path: str | None,
) -> UploadRow:
    """The upload's row, created on first sight. The same key with other bytes is refused."""
    conn.execute(
        """INSERT INTO uploads (district_id, upload_key, file_name, content_sha256, received_at,
                                archive_path)
           VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (upload_key) DO NOTHING""",
        (district_id, upload_key, file_name, content_sha256, received_at, archive_path),
    )
    upload = get_upload(conn, upload_key)
    assert upload is not None
    if upload.content_sha256 not in (None, content_sha256):
        raise ValueError(
            f"upload {upload_key} was recorded with other content "
            f"(sha256 {upload.content_sha256}, now {content_sha256})"
        )
    return upload


def record_check(
    conn: psycopg.Connection,
    district_id: int,
    upload_key: str,
    *,
    file_name: str,
    content_sha256: str,
    received_at: dt.datetime,
    result: UploadResult,
    report_file: str,
) -> UploadRow:
    """Record a check drop once, at its end: status ``checked``, what the file would have
    come to (``result.status``), its counts, error codes and the change guard's verdict.
    Its error lines name students and are not stored, except a file-level error (no
    student: the email quotes it). Recording it again keeps the first record."""
    cur = conn.execute(
        f"""INSERT INTO uploads (district_id, upload_key, file_name, content_sha256, received_at,
                                status, checked_as, {", ".join(COUNT_KEYS)}, error_codes,
                                error_file, deactivated_missing, guard_trip, guard_figures)
           VALUES (%s, %s, %s, %s, %s, %s, %s, {", ".join(["%s"] * len(COUNT_KEYS))},
                   %s, %s, %s, %s, %s)
           ON CONFLICT (upload_key) DO NOTHING""",
        (
            district_id,
            upload_key,
            file_name,
            content_sha256,
            received_at,
            str(UploadStatus.CHECKED),
            str(result.status),
            *(int(result.counts[k]) for k in COUNT_KEYS),
            Jsonb(result.error_codes),
            report_file,
            int(result.deactivated_missing),
            Jsonb(result.guard_trip) if result.guard_trip is not None else None,
            Jsonb(result.guard_figures) if result.guard_figures is not None else None,
        ),
    )
    upload = get_upload(conn, upload_key)
    assert upload is not None
    if cur.rowcount == 1 and result.file_error is not None:
        e = result.file_error
        conn.execute(
            """INSERT INTO upload_errors (upload_id, seq, line_number, student_id, column_name,
                                          error_code, message)
               VALUES (%s, 0, %s, NULL, NULL, %s, %s)""",
            (upload.upload_id, max(1, int(e.line)), str(e.code), e.message),
        )
    return upload


def newer_applied(conn: psycopg.Connection, district_id: int, upload: UploadRow) -> str | None:
    """The key of the newest upload of the district received after this one and already
    applied (this one is superseded by it), or None."""
    r = conn.execute(
        """SELECT upload_key FROM uploads WHERE district_id = %s AND upload_id <> %s
               AND status = ANY(%s) AND received_at > %s
           ORDER BY received_at DESC, upload_id DESC LIMIT 1""",
        (
            district_id,
            upload.upload_id,
            sorted(str(s) for s in APPLIED_STATUSES),
            upload.received_at,
        ),
    ).fetchone()
    return r[0] if r else None


def recent_applied_rows(
    conn: psycopg.Connection, district_id: int, upload_id: int | None, limit: int
) -> tuple[int, ...]:
    """The data rows of the district's last `limit` applied uploads, newest first (the
    change guard's baseline: their median is the district's usual file size)."""
    rows = conn.execute(
        """SELECT rows FROM uploads WHERE district_id = %s AND upload_id IS DISTINCT FROM %s
               AND status = ANY(%s) AND rows IS NOT NULL
           ORDER BY applied_at DESC, upload_id DESC LIMIT %s""",
        (district_id, upload_id, sorted(str(s) for s in APPLIED_STATUSES), limit),
    ).fetchall()
    return tuple(int(r[0]) for r in rows)


def last_applied_received_at(
    conn: psycopg.Connection, district_id: int, upload_id: int | None
) -> dt.datetime | None:
    """When the district's newest applied upload (other than this one) was received, or
    None: the pause rules (core.pauses) ask whether one was applied since a pause ended."""
    r = conn.execute(
        """SELECT received_at FROM uploads WHERE district_id = %s
               AND upload_id IS DISTINCT FROM %s AND status = ANY(%s)
           ORDER BY received_at DESC LIMIT 1""",
        (district_id, upload_id, sorted(str(s) for s in APPLIED_STATUSES)),
    ).fetchone()
    return r[0] if r else None


def supersede_held(conn: psycopg.Connection, district_id: int, upload: UploadRow) -> list[str]:
    """Held uploads received before `upload` (accepted: applied or held itself) become
    superseded: they can no longer be approved over newer data without allow_older."""
    rows = conn.execute(
        """UPDATE uploads SET status = %s
           WHERE district_id = %s AND status = %s AND upload_id <> %s AND received_at < %s
           RETURNING upload_key""",
        (
            str(UploadStatus.SUPERSEDED),
            district_id,
            str(UploadStatus.HELD),
            upload.upload_id,
            upload.received_at,
        ),
    ).fetchall()
    return [r[0] for r in rows]


def set_status(conn: psycopg.Connection, upload_id: int, status: UploadStatus) -> None:
    conn.execute("UPDATE uploads SET status = %s WHERE upload_id = %s", (str(status), upload_id))


def record_decision(
    conn: psycopg.Connection, upload_id: int, decision: str, decided_by: str
) -> None:
    """The audit of a held upload: approved or discarded, by whom, when."""
    conn.execute(
        """UPDATE uploads SET decision = %s, decided_by = %s, decided_at = now()
           WHERE upload_id = %s""",
        (decision, decided_by, upload_id),
    )


def load_errors(conn: psycopg.Connection, upload_id: int) -> pd.DataFrame:
    rows = conn.execute(
        """SELECT line_number, student_id, column_name, error_code, message
           FROM upload_errors WHERE upload_id = %s ORDER BY seq""",
        (upload_id,),
    ).fetchall()
    return error_frame(
        list(range(len(rows))),
        [r[0] for r in rows],
        [r[1] or "" for r in rows],
        [r[2] or "" for r in rows],
        [r[3] for r in rows],
        [r[4] for r in rows],
    )


def recorded_result(
    conn: psycopg.Connection, record: UploadRow, district_code: str
) -> UploadResult:
    """What was recorded for an upload, as the engine returned it the first time."""
    errors = load_errors(conn, record.upload_id)
    file_error = None
    if UploadStatus.REJECTED in (record.status, record.checked_as) and len(errors):
        first = errors.iloc[0]
        file_error = FileRejected(ErrorCode(first["code"]), int(first["line"]), first["message"])
    return UploadResult(
        upload_id=record.upload_id,
        district=district_code,
        status=record.status,
        counts=record.counts,
        error_codes=record.error_codes,
        errors=errors,
        file_error=file_error,
        already_applied=True,
        deactivated_missing=record.deactivated_missing,
        guard_trip=record.guard_trip,
        guard_figures=record.guard_figures,
    )


def uploads_of_district(conn: psycopg.Connection, district_id: int) -> list[UploadRow]:
    """Every upload of a district (retention decides from their status and time)."""
    return [
        _row(r)
        for r in conn.execute(
            _SELECT + " WHERE district_id = %s ORDER BY received_at", (district_id,)
        ).fetchall()
    ]


def mark_raw_removed(conn: psycopg.Connection, upload_key: str) -> None:
    """Record that the raw file left the district's processed/ directory."""
    conn.execute(
        "UPDATE uploads SET raw_removed_at = now() "
        "WHERE upload_key = %s AND raw_removed_at IS NULL",
        (upload_key,),
    )



def mark_reported(conn: psycopg.Connection, upload_key: str, status: UploadStatus) -> bool:
    """Record that the upload's Dagster partition shows `status` now (its run's tags, its
    check); only while that is still its status. True if recorded."""
    return (
        conn.execute(
            "UPDATE uploads SET reported_status = %s WHERE upload_key = %s AND status = %s",
            (str(status), upload_key, str(status)),
        ).rowcount
        == 1
    )


@dataclass(frozen=True)
class Unreported:
    upload_key: str
    district: str
    status: UploadStatus
    reported_status: str


def unreported(
    conn: psycopg.Connection, district_codes: list[str], limit: int = 100
) -> list[Unreported]:
    """Uploads of these districts that ran in Dagster and whose status changed since (a
    decision made outside their run: approve, discard, revert, superseded), oldest first."""
    rows = conn.execute(
        """SELECT u.upload_key, d.code, u.status, u.reported_status
           FROM uploads u JOIN districts d USING (district_id)
           WHERE u.reported_status IS NOT NULL AND u.reported_status <> u.status
             AND d.code = ANY(%s)
           ORDER BY u.upload_id LIMIT %s""",
        (list(district_codes), limit),
    ).fetchall()
    return [Unreported(r[0], r[1], UploadStatus(r[2]), r[3]) for r in rows]
