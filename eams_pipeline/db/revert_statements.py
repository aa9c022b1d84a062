"""Reverting an applied upload from the before-images in student_history: a few set-based
statements inside the caller's transaction (which holds the district's lock).

Every student the upload changed gets back its data, password hash and fingerprint,
status, school and order as they were before the upload; a student the upload created is
deactivated (it stays, so its username stays reserved). The orders' `used` counters move by
what the status and order changes imply: -1 on the order a student was active on after the
upload, +1 on the order it was active on before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg

from eams_pipeline.core.outcome import APPLIED_STATUSES, UploadStatus

_DATA = ("last_name", "first_name", "middle_name", "grade", "username", "email", "class_name")
_APPLIED = sorted(str(s) for s in APPLIED_STATUSES)


@dataclass(frozen=True)
class Applied:
    upload_id: int
    upload_key: str
    district_id: int
    status: str
    applied_at: object
    within_retention: bool


def applied_upload(conn: psycopg.Connection, upload_key: str, retention_days: int) -> Applied:
    r = conn.execute(
        """SELECT upload_id, upload_key, district_id, status, applied_at,
                  applied_at >= now() - make_interval(days => %s)
           FROM uploads WHERE upload_key = %s""",
        (retention_days, upload_key),
    ).fetchone()
    if r is None:
        raise LookupError(f"no upload {upload_key}")
    return Applied(*r)


def later_conflicts(conn: psycopg.Connection, upload_id: int) -> list[Applied]:
    """Applied uploads, applied after this one, that changed any of the same students."""
    rows = conn.execute(
        """SELECT DISTINCT u2.upload_id, u2.upload_key, u2.district_id, u2.status,
                  u2.applied_at, true
           FROM uploads u1
           JOIN student_history h1 ON h1.upload_id = u1.upload_id
           JOIN student_history h2 ON h2.student_pk = h1.student_pk
                                  AND h2.upload_id <> h1.upload_id
           JOIN uploads u2 ON u2.upload_id = h2.upload_id
           WHERE u1.upload_id = %s AND u2.status = ANY(%s)
             AND (u2.applied_at, u2.upload_id) > (u1.applied_at, u1.upload_id)
           ORDER BY u2.applied_at DESC, u2.upload_id DESC""",
        (upload_id, _APPLIED),
    ).fetchall()
    return [Applied(*r) for r in rows]


def missing_images(conn: psycopg.Connection, upload_id: int) -> int:
    """History rows written before migration 007 (no before-images: cannot be reverted)."""
    return conn.execute(
        "SELECT count(*) FROM student_history WHERE upload_id = %s AND NOT images", (upload_id,)
    ).fetchone()[0]


def restore(
    conn: psycopg.Connection, district_id: int, upload_id: int, reverted_by: str
) -> tuple[dict[str, int], dict[str, int]]:
    """Put back every student the upload changed; record the upload as reverted.

    Returns the counts (students restored, students the upload created now deactivated)
    and, by order number, how its available licenses change (+ freed, - taken back)."""
    moved = conn.execute(
        """UPDATE orders o SET used = o.used + d.delta
           FROM (SELECT order_id, sum(delta) AS delta FROM (
                     SELECT order_after AS order_id, -1 AS delta FROM student_history
                     WHERE upload_id = %(u)s AND status_after = 'active'
                     UNION ALL
                     SELECT order_before, 1 FROM student_history
                     WHERE upload_id = %(u)s AND status_before = 'active') m
                 GROUP BY order_id HAVING sum(delta) <> 0) d
           WHERE o.order_id = d.order_id AND o.district_id = %(d)s
           RETURNING o.number, -d.delta""",
        {"u": upload_id, "d": district_id},
    ).fetchall()
    available = {number: int(change) for number, change in sorted(moved)}
    data = ", ".join(f"{c} = h.{c}_before" for c in _DATA)
    restored = conn.execute(
        f"""UPDATE students s SET {data}, school_id = h.school_before,
               status = h.status_before, order_id = h.order_before,
               data_hash = h.data_hash_before, password_hash = h.password_hash_before,
               password_fingerprint = h.password_fingerprint_before, updated_at = now()
           FROM student_history h
           WHERE h.upload_id = %s AND h.status_before IS NOT NULL
             AND s.student_pk = h.student_pk AND s.district_id = %s""",
        (upload_id, district_id),
    ).rowcount
    created = conn.execute(
        """UPDATE students s SET status = 'deactivated', updated_at = now()
           FROM student_history h
           WHERE h.upload_id = %s AND h.status_before IS NULL
             AND s.student_pk = h.student_pk AND s.district_id = %s""",
        (upload_id, district_id),
    ).rowcount
    counts = {"restored": restored, "created_deactivated": created}
    conn.execute(
        """UPDATE uploads SET status = %s, reverted_at = now(), reverted_by = %s,
               revert_counts = %s WHERE upload_id = %s""",
        (str(UploadStatus.REVERTED), reverted_by, json.dumps(counts), upload_id),
    )
    return counts, available
