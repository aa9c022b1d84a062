"""Upload requests (sql/019): the uploads waiting for a run, in the order they were asked for.

A district sensor records the upload it saw settle (:func:`record_sensor_request`);
``reprocess_uploads`` records the uploads it selected (:func:`record_reprocess_requests`,
one statement for all); the ``eams_upload_requests`` sensor reads them after the last one
it handed out (:func:`pending_requests`) and requests a run for each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from eams_pipeline.core.outcome import SETTLED_STATUSES, UploadKind, UploadStatus
from eams_pipeline.db.districts import UnknownDistrict


@dataclass(frozen=True)
class UploadRequest:
    request_id: int
    district: str
    upload_key: str
    file_size: int | None  # a district sensor's request: the file it saw settle
    file_mtime: int | None
    reprocess_run: str | None  # reprocess_uploads' request: the run that asked
    allow_older: bool
    kind: UploadKind = UploadKind.UPLOAD  # check: a check drop (check_upload, not upload_job)


@dataclass(frozen=True)
class RecordedUpload:
    """An upload as the uploads table knows it (what reprocessing needs of it)."""

    district: str
    upload_key: str
    received_at: dt.datetime
    status: str
    final: bool  # a plain re-run leaves it as it is (uploads.UploadRow.is_final)


def record_sensor_request(
    conn: psycopg.Connection,
    district_code: str,
    upload_key: str,
    file_size: int,
    file_mtime: int,
    kind: UploadKind = UploadKind.UPLOAD,
) -> bool:
    """Record the upload (or check drop: ``kind``) a district sensor saw settle; False if
    it was recorded already. Raises :class:`UnknownDistrict` if the district is not in the
    database."""
    cur = conn.execute(
        """INSERT INTO upload_requests (district_id, upload_key, file_size, file_mtime, kind)
           SELECT district_id, %s, %s, %s, %s FROM districts WHERE code = %s
           ON CONFLICT (upload_key) WHERE reprocess_run IS NULL DO NOTHING""",
        (upload_key, file_size, file_mtime, str(kind), district_code),
    )
    if cur.rowcount == 1:
        return True
    known = conn.execute(
        "SELECT 1 FROM upload_requests WHERE upload_key = %s AND reprocess_run IS NULL",
        (upload_key,),
    ).fetchone()
    if known is None:
        raise UnknownDistrict(f"district {district_code} is not in the database")
    return False


def record_reprocess_requests(
    conn: psycopg.Connection,
    reprocess_run: str,
    uploads: Sequence[tuple[str, str]],
    *,
    allow_older: bool,
) -> int:
    """Record (district code, upload key) pairs to run again, in the given order; pairs this
    run recorded already are left alone. Returns how many rows were added."""
    if not uploads:
        return 0
    cur = conn.execute(
        """INSERT INTO upload_requests (district_id, upload_key, reprocess_run, allow_older)
           SELECT d.district_id, r.upload_key, %s, %s
           FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS r(code, upload_key, n)
           JOIN districts d ON d.code = r.code
           ORDER BY r.n
           ON CONFLICT (reprocess_run, upload_key) WHERE reprocess_run IS NOT NULL DO NOTHING""",
        (reprocess_run, allow_older, [c for c, _ in uploads], [k for _, k in uploads]),
    )
    return cur.rowcount


def pending_requests(
    conn: psycopg.Connection, after_request_id: int, limit: int
) -> list[UploadRequest]:
    """The requests recorded after ``after_request_id``, in the order they were recorded."""
    rows = conn.execute(
        """SELECT r.request_id, d.code, r.upload_key, r.file_size, r.file_mtime,
                  r.reprocess_run, r.allow_older, r.kind
           FROM upload_requests r JOIN districts d USING (district_id)
           WHERE r.request_id > %s ORDER BY r.request_id LIMIT %s""",
        (after_request_id, limit),
    ).fetchall()
    return [UploadRequest(*r[:7], kind=UploadKind(r[7])) for r in rows]


def recorded_uploads(
    conn: psycopg.Connection,
    *,
    district_codes: Sequence[str] = (),
    upload_keys: Sequence[str] = (),
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[RecordedUpload]:
    """The recorded uploads of these districts received in [since, until), and those with
    these keys (either list may be empty), oldest first."""
    rows = conn.execute(
        """SELECT d.code, u.upload_key, u.received_at, u.status, u.guard_trip IS NOT NULL
           FROM uploads u JOIN districts d USING (district_id)
           WHERE (d.code = ANY(%(codes)s)
                  AND (%(since)s::timestamptz IS NULL OR u.received_at >= %(since)s)
                  AND (%(until)s::timestamptz IS NULL OR u.received_at < %(until)s))
              OR u.upload_key = ANY(%(keys)s)
           ORDER BY u.received_at, u.upload_key""",
        {"codes": list(district_codes), "keys": list(upload_keys), "since": since, "until": until},
    ).fetchall()
    return [
        RecordedUpload(
            district=code,
            upload_key=key,
            received_at=received_at,
            status=status,
            # as uploads.UploadRow.is_final: settled, or held and then superseded
            final=status in SETTLED_STATUSES or (status == UploadStatus.SUPERSEDED and held),
        )
        for code, key, received_at, status, held in rows
    ]


def delete_handled_requests(
    conn: psycopg.Connection, before: dt.datetime, *, dry_run: bool = False
) -> int:
    """Delete (or with ``dry_run`` count) the requests recorded before ``before`` whose upload
    has an outcome (any status but ``received``): their runs were started long ago, and the
    table would otherwise grow by one row per upload forever. A request whose upload has no
    outcome (a run died before recording it) stays for an operator to look at. The
    ``eams_upload_requests`` sensor's cursor is a request id: deleting older rows does not
    move it. One set-based statement (the run retention job calls it daily)."""
    predicate = """FROM upload_requests r
                   WHERE r.requested_at < %(before)s
                     AND EXISTS (SELECT 1 FROM uploads u
                                 WHERE u.upload_key = r.upload_key AND u.status <> %(received)s)"""
    params = {"before": before, "received": str(UploadStatus.RECEIVED)}
    if dry_run:
        return conn.execute(f"SELECT count(*) {predicate}", params).fetchone()[0]
    return conn.execute(f"DELETE {predicate}", params).rowcount
