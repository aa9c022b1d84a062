"""What an operator reads: a district's uploads, one upload's summary, and what the
uploads changed for one student (before -> after). Password hashes are never selected."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg.rows import dict_row

from eams_pipeline.core.outcome import COUNT_KEYS, UploadStatus
from eams_pipeline.db.uploads import load_errors

_UPLOAD_COLUMNS = f"""u.upload_key, u.upload_id, d.code AS district, u.received_at, u.applied_at,
    u.status, {", ".join("u." + k for k in COUNT_KEYS)}, u.deactivated_missing,
    u.error_codes, u.error_file, u.guard_trip, u.guard_figures, u.decision, u.decided_by,
    u.decided_at, u.reverted_by, u.reverted_at, u.revert_counts,
    u.archive_path IS NOT NULL AS archived, u.checked_as"""

DATA_FIELDS = (
    ("last_name", "Last Name"),
    ("first_name", "First Name"),
    ("middle_name", "Middle Name"),
    ("grade", "Grade"),
    ("username", "Username"),
    ("email", "Email"),
    ("class_name", "Class Name"),
)


def list_uploads(
    conn: psycopg.Connection, district_code: str, since: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """The district's uploads, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT {_UPLOAD_COLUMNS} FROM uploads u JOIN districts d USING (district_id)
                WHERE d.code = %s AND (%s::timestamptz IS NULL OR u.received_at >= %s)
                ORDER BY u.received_at DESC, u.upload_id DESC""",
            (district_code, since, since),
        ).fetchall()


def show_upload(
    conn: psycopg.Connection, upload_key: str, error_lines: int = 10
) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"""SELECT {_UPLOAD_COLUMNS} FROM uploads u JOIN districts d USING (district_id)
                WHERE u.upload_key = %s""",
            (upload_key,),
        ).fetchone()
    if row is None:
        return None
    errors = load_errors(conn, row["upload_id"])
    row["error_lines"] = len(errors)
    row["first_errors"] = [
        {
            "line": int(e.line),
            "student_id": e.student_id,
            "column": e.column,
            "code": e.code,
            "message": e.message,
        }
        for e in errors.head(error_lines).itertuples(index=False)
    ]
    return row


def student_history(
    conn: psycopg.Connection, district_code: str, student_id: str
) -> list[dict[str, Any]]:
    """Every upload that changed the student, oldest first, with what changed."""
    data = ", ".join(f"h.{c}_before, h.{c}_after" for c, _ in DATA_FIELDS)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT u.upload_key, u.received_at, u.applied_at, u.status, u.reverted_at,
                       u.reverted_by, u.decision, u.decided_by, h.line_number, h.change,
                       h.status_before, h.status_after, h.images, h.data_changed,
                       h.password_changed,
                       sb.code AS school_before, sa.code AS school_after,
                       ob.number AS order_before, oa.number AS order_after, {data}
                FROM students s
                JOIN districts d ON d.district_id = s.district_id
                JOIN student_history h ON h.student_pk = s.student_pk
                JOIN uploads u ON u.upload_id = h.upload_id
                LEFT JOIN schools sb ON sb.school_id = h.school_before
                LEFT JOIN schools sa ON sa.school_id = h.school_after
                LEFT JOIN orders ob ON ob.order_id = h.order_before
                LEFT JOIN orders oa ON oa.order_id = h.order_after
                WHERE d.code = %s AND s.student_id = %s
                ORDER BY u.applied_at, u.upload_id""",
            (district_code, student_id),
        ).fetchall()
    out = []
    for r in rows:
        changes = []
        for key, label, before, after in (
            ("status", "Status", r["status_before"], r["status_after"]),
            ("school", "School Code", r["school_before"], r["school_after"]),
            ("order", "Order", r["order_before"], r["order_after"]),
            *(
                (c, name, r[f"{c}_before"], r[f"{c}_after"])
                for c, name in DATA_FIELDS
                if r["images"]
            ),
        ):
            if before != after:
                changes.append({"field": key, "label": label, "before": before, "after": after})
        if r["password_changed"]:
            changes.append({"field": "password", "label": "Password", "changed": True})
        out.append(
            {
                "upload_key": r["upload_key"],
                "received_at": r["received_at"],
                "applied_at": r["applied_at"],
                "upload_status": r["status"],
                "reverted_at": r["reverted_at"],
                "reverted_by": r["reverted_by"],
                "line_number": r["line_number"] or None,  # 0: absent from a full roster
                "change": r["change"],
                "changes": changes,
            }
        )
    return out


def student_known(conn: psycopg.Connection, district_code: str, student_id: str) -> bool:
    """Has the district ever had this student (students are deactivated, never deleted)?"""
    return (
        conn.execute(
            """SELECT 1 FROM students s JOIN districts d USING (district_id)
               WHERE d.code = %s AND s.student_id = %s""",
            (district_code, student_id),
        ).fetchone()
        is not None
    )


def last_uploads(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """Each district's newest upload (by time received; a check drop is no upload): its
    key, time and status."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT DISTINCT ON (d.code) d.code, u.upload_key, u.received_at, u.status
               FROM districts d JOIN uploads u USING (district_id)
               WHERE u.status <> %s
               ORDER BY d.code, u.received_at DESC, u.upload_id DESC""",
            (str(UploadStatus.CHECKED),),
        ).fetchall()
    return {r.pop("code"): r for r in rows}
