"""Writing a plan to the database: set-based SQL inside the upload's transaction.

Only the rows that change anything are sent: one COPY of the new students straight into
students and one of their history; one COPY of the changed students into a temporary
staging table and one statement that UPDATEs them and INSERTs their history with the
before-images it read; in full-roster mode one INSERT of history and one UPDATE for the
absent students; one UPDATE of the order counters; one DELETE of the cached hashes it
stored (db/password_cache.py); one COPY of the errors. After a rotation of the server
secret, one COPY and one UPDATE move the fingerprints recognised by the previous secret to
the current one (no history: the password is the same). The caller owns the transaction; any
exception rolls all of it back.
"""

from __future__ import annotations

import json
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pandas as pd
import psycopg
import pyarrow.compute as pc

from eams_pipeline.core.outcome import FINAL_STATUSES, UploadStatus
from eams_pipeline.core.plan import Plan, lower_usernames
from eams_pipeline.db import password_cache
from eams_pipeline.db.bulk_copy import copy_in, encode_csv
from eams_pipeline.db.connection import local_settings

_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS stage_updates (
    student_pk bigint NOT NULL, school_id bigint NOT NULL,
    last_name text, first_name text, middle_name text, grade text, username text,
    password_hash text, password_fp bigint, email text, class_name text, status text,
    order_id bigint, data_hash bigint, line_number integer, change text,
    status_before text, order_before bigint, school_before bigint, data_changed boolean
) ON COMMIT DELETE ROWS
"""

_DATA = ("last_name", "first_name", "middle_name", "grade", "username", "email", "class_name")
_HISTORY_COLUMNS = (
    "upload_id, student_pk, line_number, change, status_before, status_after, order_before, "
    "order_after, school_before, school_after, data_changed, "
    + ", ".join(f"{c}_before, {c}_after" for c in _DATA)
    + ", data_hash_before, password_hash_before, password_fingerprint_before, password_changed"
)

# Each step below is a named function so a test can make one of them fail on purpose.


class Keyed(NamedTuple):
    changes: pd.DataFrame  # every change, the new students' with their keys
    new: np.ndarray  # the positions of the new students in `changes`, in key order
    staged: int  # the changes of stored students, in stage_updates


def stage_changes(conn: psycopg.Connection, plan: Plan, password_hashes: pd.Series) -> Keyed:
    """Key the new students (from the students sequence); stage the changes of the stored
    students (for the UPDATE, which reads their before-images in the database). The new
    students are written straight from the frame returned."""
    c = plan.changes  # core.plan.CHANGE_COLUMNS: what the apply and the hashing read
    if c.empty:
        return Keyed(c, np.zeros(0, dtype="int64"), 0)
    new = c["student_pk"].isna()
    written = _in_username_order(c, np.flatnonzero(new.to_numpy()))
    student_pk = c["student_pk"].copy()
    if len(written):
        student_pk.iloc[written] = _new_keys(conn, len(written))
    keyed = c.assign(
        student_pk=student_pk,
        # (an onboarding changes every password: the same rows, not a copy of 1M hashes)
        password_hash=password_hashes
        if password_hashes.index.equals(c.index)
        else password_hashes.reindex(c.index),
        password_fp=c["password_fp"].where(c["password_changed"], pd.NA),
        status_before=c["status_before"].where(c["status_before"] != "absent", None),
    )
    old = keyed[~new].sort_values("student_pk")  # the UPDATE probes students in key order
    conn.execute(_CREATE_STAGE)
    conn.execute("TRUNCATE stage_updates")
    if not old.empty:
        copy_in(
            conn,
            "stage_updates",
            pd.DataFrame(
                {
                    "student_pk": old["student_pk"],
                    "school_id": old["school_id"],
                    **{col: old[col] for col in _DATA},
                    "password_hash": old["password_hash"],
                    "password_fp": old["password_fp"],
                    "status": old["status_after"],
                    "order_id": old["order_after"],
                    "data_hash": old["data_hash"],
                    "line_number": old["line"],
                    "change": old["outcome"],
                    "status_before": old["status_before"],
                    "order_before": old["order_before"],
                    "school_before": old["school_before"],
                    "data_changed": old["data_changed"],
                }
            ),
        )
    # positions, not a copy of the new students' rows (1M on an onboarding night)
    return Keyed(keyed, written, len(old))


def _in_username_order(changes: pd.DataFrame, new: np.ndarray) -> np.ndarray:
    """The positions `new` in the order of the username index (lower(username); Python's
    code-point order is the index's under the C and C.UTF-8 collations, and close to it
    under others)."""
    return new[pc.sort_indices(lower_usernames(changes["username"].iloc[new])).to_numpy()]


def _new_keys(conn: psycopg.Connection, n: int) -> np.ndarray:
    """`n` keys from the students sequence, ascending, as one binary aggregate (a row per
    key cost Python far more for 1M keys: bench/RESULTS.md). The new students get them in
    the order they are written: the username index's (see insert_new_students). Knowing the
    keys up front lets the new students and their history be written straight from the
    plan, without reading them back."""
    # the sequence is looked up once: pg_get_serial_sequence per row was nearly all the time
    (packed,) = conn.execute(
        """WITH s AS MATERIALIZED (
               SELECT pg_get_serial_sequence('students', 'student_pk')::regclass AS seq)
           SELECT string_agg(int8send(nextval(seq)), ''::bytea)
           FROM s, generate_series(1, %s)""",
        (n,),
    ).fetchone()
    return np.sort(np.frombuffer(packed, dtype=">i8").astype("int64"))


def insert_new_students(
    conn: psycopg.Connection,
    district_id: int,
    keyed: Keyed,
    encoded: list[bytes] | None = None,
) -> None:
    """COPY the new students straight into students (COPY writes an identity column's given
    values, as INSERT ... OVERRIDING SYSTEM VALUE; it inserts in batches, one WAL record
    per page instead of per row). `encoded`: their rows already made (encode_ahead).

    They go in the order of the username index, and their keys ascend in that order
    (stage_changes): new usernames fall all over that index, which is then read and written
    one leaf after the other instead of at random; the new keys go to the right end of the
    primary key one after the other; and the table's pages hold the new students in key
    order, so the history's key check (sql/010), which probes them in key order, and a
    later UPDATE in key order read each page once (the effect on onboarding-1m, against
    keys in file order: bench/RESULTS.md)."""
    if len(keyed.new) == 0:
        return
    copy_in(conn, "students", _new_students(district_id, keyed), keyed.new, encoded=encoded)


def _new_students(district_id: int, keyed: Keyed) -> pd.DataFrame:
    new = keyed.changes
    return pd.DataFrame(
        {
            "student_pk": new["student_pk"],
            "district_id": district_id,
            "student_id": new["student_id"],
            "school_id": new["school_id"],
            **{col: new[col] for col in _DATA[:5]},
            "password_hash": new["password_hash"],
            "password_fingerprint": new["password_fp"],
            "email": new["email"],
            "class_name": new["class_name"],
            "status": new["status_after"],
            "order_id": new["order_after"],
            "data_hash": new["data_hash"],
        },
        copy=False,  # the plan's columns as they are (with `encoded`, only their names count)
    )


def record_history(
    conn: psycopg.Connection, upload_id: int, keyed: Keyed, encoded: list[bytes] | None = None
) -> None:
    """The history of the new students (no before-image), COPied from the plan (in key
    order: the key check's); the changed students' history is written by the UPDATE that
    changes them. `encoded`: its rows already made (encode_ahead)."""
    if len(keyed.new) == 0:
        return
    copy_in(conn, "student_history", _new_history(upload_id, keyed), keyed.new, encoded=encoded)


def _new_history(upload_id: int, keyed: Keyed) -> pd.DataFrame:
    new = keyed.changes
    return pd.DataFrame(
        {
            "upload_id": upload_id,
            "student_pk": new["student_pk"],
            "line_number": new["line"],
            "change": new["outcome"],
            "status_before": new["status_before"],
            "status_after": new["status_after"],
            "order_before": new["order_before"],
            "order_after": new["order_after"],
            "school_before": new["school_before"],
            "school_after": new["school_id"],
            "data_changed": new["data_changed"],
            **{f"{col}_after": new[col] for col in _DATA},
            "password_changed": new["password_fp"].notna(),
        },
        copy=False,
    )


# The new students' rows are made on a thread while the UPDATE runs (encode_ahead) only
# up to this many: their CSV is then held whole (~0.4 KB a student with its history).
AHEAD_MAX_ROWS = 262_144


class Ahead(NamedTuple):
    students: Future[list[bytes]] | None
    history: Future[list[bytes]] | None

    @staticmethod
    def result(encoded: Future[list[bytes]] | None) -> list[bytes] | None:
        return None if encoded is None else encoded.result()


def encode_ahead(district_id: int, upload_id: int, keyed: Keyed, executor: Executor) -> Ahead:
    """The new students' rows and their history as COPY data, made on `executor` while the
    server runs the UPDATE of the changed students: Python's share of those COPYs then
    runs on the other core, beside PostgreSQL's. Only on a
    night with both (on an onboarding night there is no UPDATE to hide it behind, and the
    COPY streams its rows as it makes them)."""
    if keyed.staged == 0 or not 0 < len(keyed.new) <= AHEAD_MAX_ROWS:
        return Ahead(None, None)
    return Ahead(
        executor.submit(lambda: list(encode_csv(_new_students(district_id, keyed), keyed.new))),
        executor.submit(lambda: list(encode_csv(_new_history(upload_id, keyed), keyed.new))),
    )


# The UPDATE joins the staged rows to the students they change (`o`, one index probe each,
# in key order) and changes each by its row id (`s.ctid = o.ctid`: the page just read).
# `o` is the row as it was: RETURNING o.* is the before-image, which the outer INSERT
# writes to the history in the same pass (PostgreSQL 15 has no RETURNING OLD).
_UPDATE_AND_RECORD = f"""
WITH upd AS (
    UPDATE students s SET
        school_id = st.school_id, last_name = st.last_name, first_name = st.first_name,
        middle_name = st.middle_name, grade = st.grade, username = st.username,
        password_hash = coalesce(st.password_hash, o.password_hash),
        password_fingerprint = coalesce(st.password_fp, o.password_fingerprint),
        email = st.email, class_name = st.class_name, status = st.status,
        order_id = st.order_id, data_hash = st.data_hash, updated_at = now()
    FROM stage_updates st JOIN students o ON o.student_pk = st.student_pk
    WHERE o.district_id = %(district)s AND s.ctid = o.ctid
    RETURNING st.student_pk, st.line_number, st.change, st.status_before, st.status,
        st.order_before, st.order_id, st.school_before, st.school_id, st.data_changed,
        {", ".join(f"o.{c} AS {c}_before, st.{c}" for c in _DATA)},
        o.data_hash AS data_hash_before, o.password_hash AS password_hash_before,
        o.password_fingerprint AS password_fingerprint_before,
        st.password_fp IS NOT NULL AS password_changed
)
INSERT INTO student_history ({_HISTORY_COLUMNS})
SELECT %(upload)s, * FROM upd
"""

# The join above is a nested loop (stage -> index probe -> row id) whatever the estimates:
# a hash join would read all of students (1M rows) to change 100k of them, twice (for `o`
# and for `s`). JIT would only compile for the inflated nested-loop cost estimate.
_PLAN_SETTINGS = {"enable_hashjoin": "off", "enable_mergejoin": "off", "jit": "off"}


def update_changed_students(
    conn: psycopg.Connection, district_id: int, upload_id: int, staged: int
) -> None:
    """UPDATE the changed students and record their history with the before-images, in one
    statement."""
    if staged == 0:
        return
    with local_settings(conn, _PLAN_SETTINGS):
        written = conn.execute(
            _UPDATE_AND_RECORD, {"district": district_id, "upload": upload_id}
        ).rowcount
    if written != staged:  # the plan was made under the district's lock: cannot happen
        raise RuntimeError(f"updated {written} students, the plan changes {staged}")


def forget_used_hashes(conn: psycopg.Connection, district_id: int, keyed: Keyed) -> None:
    """Remove from the password_hash_cache the hashes this apply stored: the new students'
    (by their keys: one range from the sequence) and the changed passwords of stored
    students."""
    c = keyed.changes
    keys = c["student_pk"].iloc[keyed.new]
    new_keys = (int(keys.iloc[0]), int(keys.iloc[-1])) if len(keys) else None
    stored = np.ones(len(c), dtype=bool)
    stored[keyed.new] = False
    changed = c.loc[
        stored & c["password_changed"].to_numpy(dtype=bool), ["student_id", "password_fp"]
    ]
    password_cache.forget(
        conn,
        district_id,
        new_keys,
        changed["student_id"].tolist(),
        changed["password_fp"].astype("int64").tolist(),
    )


_CREATE_REKEY = """
CREATE TEMP TABLE IF NOT EXISTS stage_rekey (
    student_pk bigint NOT NULL, password_fp_before bigint NOT NULL, password_fp bigint NOT NULL
) ON COMMIT DELETE ROWS
"""


def rekey_fingerprints(conn: psycopg.Connection, district_id: int, rekeyed: pd.DataFrame) -> int:
    """Move the stored password fingerprints the plan recognised by a previous server secret
    (Plan.rekeyed: student_pk, password_fp_before, password_fp) to the current secret's:
    the same password, so no history line, no `updated_at`, no hash. A student whose stored
    fingerprint is no longer `password_fp_before` is left alone. Returns how many moved.

    Staged by COPY in key order and joined by the planner (the first upload of a district
    after a rotation moves nearly every student's: a hash join; later ones, a few: probes).
    The column is in no index, so the updates are HOT."""
    if rekeyed.empty:
        return 0
    conn.execute(_CREATE_REKEY)
    conn.execute("TRUNCATE stage_rekey")
    copy_in(conn, "stage_rekey", rekeyed.sort_values("student_pk"))
    conn.execute("ANALYZE stage_rekey")
    return conn.execute(
        """UPDATE students s SET password_fingerprint = r.password_fp
           FROM stage_rekey r
           WHERE s.student_pk = r.student_pk AND s.district_id = %s
             AND s.password_fingerprint = r.password_fp_before""",
        (district_id,),
    ).rowcount


def move_licenses(conn: psycopg.Connection, district_id: int, deltas: pd.DataFrame) -> None:
    if deltas.empty:
        return
    conn.execute(
        """UPDATE orders o SET used = o.used + d.delta
           FROM unnest(%s::bigint[], %s::integer[]) AS d(order_id, delta)
           WHERE o.order_id = d.order_id AND o.district_id = %s""",
        (deltas["order_id"].tolist(), deltas["delta"].tolist(), district_id),
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
) -> int:
    """Write the plan's changes, licenses and history (inside the caller's transaction).
    Returns how many stored fingerprints moved to the current secret (rekey_fingerprints)."""
    # sorts and hashes over a night's changes (~200k rows) fit in memory, not temp files
    conn.execute("SET LOCAL work_mem = '64MB'")
    # first: the changed students' before-images (and a revert) then hold the current
    # secret's fingerprint too
    rekeyed = rekey_fingerprints(conn, district_id, plan.rekeyed)
    keyed = stage_changes(conn, plan, password_hashes)
    # the changed students first: the new students' rows are made meanwhile (encode_ahead);
    # neither write depends on the other (a username held by a stored student is never
    # given to a new one: core.plan's USERNAME_TAKEN)
    with ThreadPoolExecutor(1, thread_name_prefix="eams-encode") as executor:
        ahead = encode_ahead(district_id, upload_id, keyed, executor)
        update_changed_students(conn, district_id, upload_id, keyed.staged)
        insert_new_students(conn, district_id, keyed, Ahead.result(ahead.students))
        record_history(conn, upload_id, keyed, Ahead.result(ahead.history))
    forget_used_hashes(conn, district_id, keyed)
    deactivate_missing(conn, district_id, upload_id, plan.missing)
    move_licenses(conn, district_id, plan.license_deltas)
    return rekeyed
