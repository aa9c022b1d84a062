"""Reprocessing requests (sql/019): the uploads an operator asked to run again, in order.

Written by the launchpad job ``reprocess_uploads`` (one statement for all the uploads it
selected), read by the reprocess sensor after the last item it handed out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from eams_pipeline.core.outcome import SETTLED_STATUSES, UploadStatus


@dataclass(frozen=True)
class RecordedUpload:
    """An upload as the uploads table knows it (what reprocessing needs of it)."""

    district: str
    upload_key: str
    received_at: dt.datetime
    status: str
    final: bool  # a plain re-run leaves it as it is (uploads.UploadRow.is_final)


@dataclass(frozen=True)
class ReprocessItem:
    item_id: int
    requested_by: str
    district: str
    upload_key: str
    allow_older: bool


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


def insert_requests(
    conn: psycopg.Connection,
    requested_by: str,
    uploads: Sequence[tuple[str, str]],
    *,
    allow_older: bool,
) -> int:
    """Record (district code, upload key) pairs to reprocess, in the given order; pairs this
    requester already recorded are left alone. Returns how many rows were added."""
    if not uploads:
        return 0
    cur = conn.execute(
        """INSERT INTO reprocess_requests (requested_by, district_id, upload_key, allow_older)
           SELECT %s, d.district_id, r.upload_key, %s
           FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS r(code, upload_key, n)
           JOIN districts d ON d.code = r.code
           ORDER BY r.n
           ON CONFLICT (requested_by, upload_key) DO NOTHING""",
        (requested_by, allow_older, [c for c, _ in uploads], [k for _, k in uploads]),
    )
    return cur.rowcount


def pending_requests(
    conn: psycopg.Connection, after_item_id: int, limit: int
) -> list[ReprocessItem]:
    """The requests recorded after ``after_item_id``, in the order they were recorded."""
    rows = conn.execute(
        """SELECT r.item_id, r.requested_by, d.code, r.upload_key, r.allow_older
           FROM reprocess_requests r JOIN districts d USING (district_id)
           WHERE r.item_id > %s ORDER BY r.item_id LIMIT %s""",
        (after_item_id, limit),
    ).fetchall()
    return [ReprocessItem(*r) for r in rows]
