"""The change report's lines (core.change_file) from the history an apply writes: one
query over the upload's student_history rows, streamed out by COPY. Nothing is written."""

from __future__ import annotations

import io

import psycopg
from psycopg import sql

from eams_pipeline.core.change_file import (
    DATA_FIELDS,
    FIELDS,
    ORDER,
    PASSWORD,
    PASSWORD_CHANGED,
    SCHOOL,
    STATUS,
    Change,
)


def _query(revert: bool) -> str:
    """The report's lines of one upload (`{upload}`), or of its revert.

    Each history row becomes one line per field whose value differs between `old` and
    `new`: for the upload, its before- and after-image; for its revert, its after-image and
    what the revert put back (db.revert_statements: the before-image; a student the upload added is
    only deactivated). A student the upload added has its Status line only."""
    if revert:
        old_status, new_status = "h.status_after", "coalesce(h.status_before, 'deactivated')"
        old_school, new_school = "sa.code", "sb.code"
        old_order, new_order = "oa.number", "ob.number"
        data = [(f"h.{c}_after", f"h.{c}_before") for c, _ in DATA_FIELDS]
        missing = "false"  # a revert activates the students a full roster deactivated
    else:
        old_status, new_status = "h.status_before", "h.status_after"
        old_school, new_school = "sb.code", "sa.code"
        old_order, new_order = "ob.number", "oa.number"
        data = [(f"h.{c}_before", f"h.{c}_after") for c, _ in DATA_FIELDS]
        missing = "h.line_number = 0"
    status = f"""CASE WHEN {old_status} IS NULL THEN '{Change.ADDED}'
                      WHEN {new_status} = 'active' THEN '{Change.ACTIVATED}'
                      WHEN {missing} THEN '{Change.DEACTIVATED_MISSING}'
                      ELSE '{Change.DEACTIVATED}' END"""
    values = {
        STATUS: (status, old_status, new_status),
        SCHOOL: (f"'{Change.MOVED}'", old_school, new_school),
        PASSWORD: (
            f"'{Change.UPDATED}'",
            "NULL::text",
            f"CASE WHEN h.password_changed THEN '{PASSWORD_CHANGED}' END",
        ),
        ORDER: (f"'{Change.UPDATED}'", old_order, new_order),
        **{
            field: (f"'{Change.UPDATED}'", old, new)
            for (_, field), (old, new) in zip(DATA_FIELDS, data, strict=True)
        },
    }
    rows = ",\n".join(
        f"({rank}, {values[field][0]}, '{field}', {values[field][1]}, {values[field][2]})"
        for rank, field in enumerate(FIELDS)
    )
    return f"""
        SELECT nullif(h.line_number, 0), s.student_id, f.change, f.field, f.old, f.new
        FROM student_history h
        JOIN students s ON s.student_pk = h.student_pk
        LEFT JOIN schools sb ON sb.school_id = h.school_before
        JOIN schools sa ON sa.school_id = h.school_after
        LEFT JOIN orders ob ON ob.order_id = h.order_before
        JOIN orders oa ON oa.order_id = h.order_after
        CROSS JOIN LATERAL (VALUES {rows}) AS f(rank, change, field, old, new)
        WHERE h.upload_id = {{upload}}
          AND f.old IS DISTINCT FROM f.new
          AND (f.rank = 0 OR h.status_before IS NOT NULL)
        ORDER BY h.line_number = 0, h.line_number, s.student_id COLLATE "C", f.rank"""


_QUERIES = {False: _query(False), True: _query(True)}


def change_lines(conn: psycopg.Connection, upload_id: int, *, revert: bool = False) -> bytes:
    """The report's lines as CSV without a header (what core.change_file renders)."""
    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(
        sql.SQL(_QUERIES[revert]).format(upload=sql.Literal(upload_id))
    )
    out = io.BytesIO()
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for block in copy:
            out.write(block)
    return out.getvalue()
