"""Writing a plan to the database: set-based SQL inside the upload's transaction.

Only the rows that change anything are sent: COPY into a temporary staging table, then
one INSERT for new students, one INSERT of the history (with the before-images read from
the students about to change), one UPDATE for changed ones, in full-roster mode one
INSERT of history and one UPDATE for the absent students, one UPDATE of the order
counters, one COPY of the errors. The caller owns the
transaction; any exception rolls all of it back.
"""

from __future__ import annotations

import json

import pandas as pd
import psycopg

from eams_pipeline.core.outcome import FINAL_STATUSES, UploadStatus
from eams_pipeline.core.plan import Plan
from eams_pipeline.db.snapshot import copy_in

_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS stage_students (
    student_pk bigint NOT NULL, new_student boolean NOT NULL,
    student_id text NOT NULL, school_id bigint NOT NULL,
    last_name text, first_name text, middle_name text, grade text, username text,
    password_hash text, password_fp bigint, email text, class_name text, status text,
    order_id bigint, data_hash bigint, line_number integer, change text,
    status_before text, order_before bigint, school_before bigint, data_changed boolean
) ON COMMIT DELETE ROWS
"""

# Each step below is a named function so a test can make one of them fail on purpose.


def stage_changes(conn: psycopg.Connection, plan: Plan, password_hashes: pd.Series) -> None:
    conn.execute(_CREATE_STAGE)
    conn.execute("TRUNCATE stage_students")
    c = plan.changes
    if c.empty:
        return
    new = c["student_pk"].isna()
    stage = pd.DataFrame(
        {
            "student_pk": _with_new_keys(conn, c["student_pk"], new, c["line"]),
            "new_student": new,
            "student_id": c["student_id"],
            "school_id": c["school_id"],
            "last_name": c["last_name"],
            "first_name": c["first_name"],
            "middle_name": c["middle_name"],
            "grade": c["grade"],
            "username": c["username"],
            "password_hash": password_hashes.reindex(c.index),
            "password_fp": c["password_fp"].where(c["password_changed"], pd.NA),
            "email": c["email"],
            "class_name": c["class_name"],
            "status": c["status_after"],
            "order_id": c["order_after"],
            "data_hash": c["data_hash"],
            "line_number": c["line"],
            "change": c["outcome"],
            "status_before": c["status_before"].where(c["status_before"] != "absent", None),
            "order_before": c["order_before"],
            "school_before": c["school_before"],
            "data_changed": c["data_changed"],
        }
    )
    copy_in(conn, "stage_students", stage)
    # a temporary table has no statistics until analysed: without them the planner
    # guesses a few hundred rows and picks merge joins over the whole students index.
    # Only the columns the statements filter and join on: the row count and their null
    # fractions are what the planner needs; the other 19 columns (argon2 strings among
    # them) made ANALYZE 0.3-0.4 s instead of ~0.1 s on 200k staged rows
    conn.execute("ANALYZE stage_students (student_pk, new_student)")


def _with_new_keys(
    conn: psycopg.Connection, student_pk: pd.Series, new: pd.Series, line: pd.Series
) -> pd.Series:
    """The stored students' keys, and a key from the students sequence for each new one,
    ascending in file order. Knowing the keys up front lets the history be written from
    the staging table alone, instead of joining it back to students by Student ID."""
    n = int(new.sum())
    if n == 0:
        return student_pk
    # the sequence is looked up once: pg_get_serial_sequence per row was 0.25 s of 0.28 s
    keys = conn.execute(
        """WITH s AS MATERIALIZED (
               SELECT pg_get_serial_sequence('students', 'student_pk')::regclass AS seq)
           SELECT nextval(seq) FROM s, generate_series(1, %s)""",
        (n,),
    ).fetchall()
    keyed = student_pk.copy()
    keyed[line[new].sort_values().index] = sorted(k for (k,) in keys)
    return keyed


def insert_new_students(conn: psycopg.Connection, district_id: int) -> None:
    conn.execute(
        """INSERT INTO students (student_pk, district_id, student_id, school_id, last_name,
               first_name, middle_name, grade, username, password_hash, password_fingerprint,
               email, class_name, status, order_id, data_hash)
           OVERRIDING SYSTEM VALUE
           SELECT student_pk, %s, student_id, school_id, last_name, first_name, middle_name,
               grade, username, password_hash, password_fp, email, class_name, status,
               order_id, data_hash
           FROM stage_students WHERE new_student ORDER BY student_pk""",
        (district_id,),
    )


def update_changed_students(conn: psycopg.Connection, district_id: int) -> None:
    conn.execute(
        """UPDATE students s SET
               school_id = st.school_id, last_name = st.last_name, first_name = st.first_name,
               middle_name = st.middle_name, grade = st.grade, username = st.username,
               password_hash = coalesce(st.password_hash, s.password_hash),
               password_fingerprint = coalesce(st.password_fp, s.password_fingerprint),
               email = st.email, class_name = st.class_name, status = st.status,
               order_id = st.order_id, data_hash = st.data_hash, updated_at = now()
           FROM stage_students st
           WHERE NOT st.new_student AND s.student_pk = st.student_pk
             AND s.district_id = %s""",
        (district_id,),
    )


def move_licenses(conn: psycopg.Connection, district_id: int, deltas: pd.DataFrame) -> None:
    if deltas.empty:
        return
    conn.execute(
        """UPDATE orders o SET used = o.used + d.delta
           FROM unnest(%s::bigint[], %s::integer[]) AS d(order_id, delta)
           WHERE o.order_id = d.order_id AND o.district_id = %s""",
        (deltas["order_id"].tolist(), deltas["delta"].tolist(), district_id),
    )


_DATA = ("last_name", "first_name", "middle_name", "grade", "username", "email", "class_name")
_HISTORY_COLUMNS = (
    "upload_id, student_pk, line_number, change, status_before, status_after, order_before, "
    "order_after, school_before, school_after, data_changed, "
    + ", ".join(f"{c}_before, {c}_after" for c in _DATA)
    + ", data_hash_before, password_hash_before, password_fingerprint_before, password_changed"
)


def record_history(conn: psycopg.Connection, district_id: int, upload_id: int) -> None:
    """One history row per changed student, with the before-image of its data, password
    hash and fingerprint (what a revert restores) and the after-image of its data. Runs
    after the new students are inserted (the key to students) and before the changed ones
    are updated (the before-image is read from them)."""
    data = ", ".join(f"s.{c}, st.{c}" for c in _DATA)
    conn.execute(
        f"""INSERT INTO student_history ({_HISTORY_COLUMNS})
           SELECT %s, st.student_pk, st.line_number, st.change, st.status_before, st.status,
               st.order_before, st.order_id, st.school_before, st.school_id, st.data_changed,
               {data}, s.data_hash, s.password_hash, s.password_fingerprint,
               st.password_fp IS NOT NULL
           FROM stage_students st
           LEFT JOIN students s ON s.student_pk = st.student_pk AND NOT st.new_student
                                AND s.district_id = %s
           ORDER BY st.student_pk""",  # index and FK-lookup locality
        (upload_id, district_id),
    )


def deactivate_missing(
    conn: psycopg.Connection, district_id: int, upload_id: int, missing: pd.DataFrame
) -> None:
    """Full roster: the active students absent from the file become deactivated (their
    licenses move with the plan's license deltas). History line number 0: not in the file."""
    if missing.empty:
        return
    pks = [int(v) for v in missing["student_pk"].to_numpy()]
    data = ", ".join(f"s.{c}, s.{c}" for c in _DATA)
    conn.execute(
        f"""INSERT INTO student_history ({_HISTORY_COLUMNS})
           SELECT %s, s.student_pk, 0, 'deactivated', s.status, 'deactivated', s.order_id,
               s.order_id, s.school_id, s.school_id, false, {data}, s.data_hash,
               s.password_hash, s.password_fingerprint, false
           FROM students s JOIN unnest(%s::bigint[]) AS m(student_pk) USING (student_pk)
           WHERE s.district_id = %s AND s.status = 'active'
           ORDER BY s.student_pk""",
        (upload_id, pks, district_id),
    )
    conn.execute(
        """UPDATE students s SET status = 'deactivated', updated_at = now()
           FROM unnest(%s::bigint[]) AS m(student_pk)
           WHERE s.student_pk = m.student_pk AND s.district_id = %s AND s.status = 'active'""",
        (pks, district_id),
    )


def record_errors(conn: psycopg.Connection, upload_id: int, errors: pd.DataFrame) -> None:
    conn.execute("DELETE FROM upload_errors WHERE upload_id = %s", (upload_id,))
    if errors.empty:
        return
    frame = pd.DataFrame(
        {
            "upload_id": upload_id,
            "seq": range(1, len(errors) + 1),
            "line_number": errors["line"].to_numpy(),
            "student_id": errors["student_id"].to_numpy(),
            "column_name": errors["column"].to_numpy(),
            "error_code": errors["code"].to_numpy(),
            "message": errors["message"].to_numpy(),
        }
    )
    copy_in(conn, "upload_errors", frame)


def record_outcome(
    conn: psycopg.Connection,
    upload_id: int,
    status: UploadStatus,
    counts: dict[str, int],
    error_codes: dict[str, int],
    error_file: str | None,
    *,
    deactivated_missing: int = 0,
    guard_trip: dict | None = None,
    guard_figures: dict | None = None,
) -> None:
    conn.execute(
        """UPDATE uploads SET status = %s,
               applied_at = CASE WHEN %s THEN now() END,
               rows = %s, added = %s,
               activated = %s, deactivated = %s, updated = %s, unchanged = %s, errors = %s,
               error_codes = %s, error_file = %s, deactivated_missing = %s,
               guard_trip = coalesce(%s::jsonb, guard_trip), guard_figures = %s
           WHERE upload_id = %s""",
        (
            str(status),
            status in FINAL_STATUSES,
            counts["rows"],
            counts["added"],
            counts["activated"],
            counts["deactivated"],
            counts["updated"],
            counts["unchanged"],
            counts["errors"],
            json.dumps(error_codes),
            error_file,
            deactivated_missing,
            json.dumps(guard_trip) if guard_trip is not None else None,
            json.dumps(guard_figures) if guard_figures is not None else None,
            upload_id,
        ),
    )


def apply_plan(
    conn: psycopg.Connection,
    district_id: int,
    upload_id: int,
    plan: Plan,
    password_hashes: pd.Series,
) -> None:
    """Write the plan's changes, licenses and history (inside the caller's transaction)."""
    # sorts and hashes over a night's changes (~200k rows) fit in memory, not temp files
    conn.execute("SET LOCAL work_mem = '64MB'")
    stage_changes(conn, plan, password_hashes)
    insert_new_students(conn, district_id)
    record_history(conn, district_id, upload_id)  # reads the before-images: before UPDATE
    update_changed_students(conn, district_id)
    deactivate_missing(conn, district_id, upload_id, plan.missing)
    move_licenses(conn, district_id, plan.license_deltas)
