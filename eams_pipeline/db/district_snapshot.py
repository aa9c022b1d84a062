"""Reading the district's current state for the plan, under the district's lock.

`lock_district` (db.districts) takes a row lock on the district: every writer of a
district's students or orders (an upload, `eams setup load`) takes it first, so two
uploads of one district never apply at the same time, and the snapshot a plan is made
from stays true until the transaction commits.
"""

from __future__ import annotations

import functools
from concurrent.futures import Executor

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from eams_pipeline.core.plan import DistrictSnapshot, RowMatch
from eams_pipeline.db.bulk_copy import copy_out, pandas_type
from eams_pipeline.db.districts import District
from eams_pipeline.db.usernames import lock_usernames, usernames_held_by_others

_STUDENT_TYPES = {
    "student_id": pa.string(),
    "student_pk": pa.int64(),
    "status": pa.string(),
    "order_id": pa.int64(),
    "school_id": pa.int64(),
    "data_hash": pa.int64(),
    "password_fingerprint": pa.int64(),
    "username_lower": pa.string(),
}


_STUDENTS_QUERY = r"""
SELECT count(*),
       convert_to(string_agg(student_id, E'\n'), 'UTF8'),
       convert_to(string_agg(username, E'\n'), 'UTF8'),
       string_agg(int8send(student_pk), ''::bytea),
       string_agg(int8send(order_id), ''::bytea),
       string_agg(int8send(school_id), ''::bytea),
       string_agg(int8send(data_hash), ''::bytea),
       string_agg(int8send(coalesce(password_fingerprint, 0)), ''::bytea),
       string_agg(set_byte('\x00'::bytea, 0, (status = 'active')::int
                                             + 2 * (password_fingerprint IS NULL)::int),
                  ''::bytea)
FROM students WHERE district_id = %s"""


def load_district_students(conn: psycopg.Connection, district: District) -> pd.DataFrame:
    """What the plan needs of every student of the district, in one row of columns.

    Not a COPY: COPY TO sends one protocol message per row, and reading 900k of them costs
    Python about a second holding the GIL, which competes with the file's parsing that runs at
    the same time. The server aggregates each column into one value instead (one pass, the
    same row order in every aggregate): the numbers as 8-byte big-endian binaries
    (`int8send`, read by numpy without parsing text, cheaper for the server than the same
    as CSV text), the Student IDs and usernames as
    line-separated text (a CHECK keeps line breaks out of both: sql/002, sql/011), and one
    byte of flags per student (active; no password fingerprint). The usernames are
    lower-cased here, by the kernel that lower-cases the file's (core.plan.lower_usernames):
    the same for the ASCII a CHECK holds them to, and `lower()` was a fifth of the query's
    server time, on the path the match waits for (figures: bench/RESULTS.md, "Figures
    behind the documents")."""
    count, ids, usernames, *numbers, flags = (
        conn.cursor(binary=True).execute(_STUDENTS_QUERY, (district.district_id,)).fetchone()
    )
    if count == 0:
        return pd.DataFrame(
            {name: pd.Series(dtype=pandas_type(t)) for name, t in _STUDENT_TYPES.items()}
        )
    pk, order, school, data_hash, fingerprint = (
        np.frombuffer(n, dtype=">i8").astype(np.int64) for n in numbers
    )
    flag = np.frombuffer(flags, dtype=np.uint8)
    status = pc.take(pa.array(["deactivated", "active"]), pa.array(flag & 1))

    def lines(blob: bytes) -> pa.Array:  # large_string: pandas' layout for text (no cast)
        whole = pa.Array.from_buffers(  # the received bytes as one value, not a copy
            pa.large_binary(),
            1,
            [None, pa.py_buffer(np.array([0, len(blob)], dtype=np.int64)), pa.py_buffer(blob)],
        )
        return pc.split_pattern(whole, "\n").flatten().cast(pa.large_string())

    def integers(values: np.ndarray, missing: np.ndarray | None = None) -> pd.arrays.IntegerArray:
        return pd.arrays.IntegerArray(
            values, np.zeros(count, dtype=bool) if missing is None else missing
        )

    return pd.DataFrame(
        {
            "student_id": pd.array(lines(ids), dtype="str"),
            "student_pk": integers(pk),
            "status": pd.array(status, dtype="str"),
            "order_id": integers(order),
            "school_id": integers(school),
            "data_hash": integers(data_hash),
            "password_fingerprint": integers(fingerprint, (flag & 2) > 0),
            "username_lower": pd.array(pc.utf8_lower(lines(usernames)), dtype="str"),
        }
    )


def students_version(conn: psycopg.Connection, district_id: int) -> int:
    """The version of the district's students: it changes with every write to them
    (statement triggers of sql/012), in the writing transaction."""
    return conn.execute(
        "SELECT students_version FROM districts WHERE district_id = %s", (district_id,)
    ).fetchone()[0]


def load_students_versioned(
    conn: psycopg.Connection, district: District
) -> tuple[int, pd.DataFrame]:
    """The district's students (load_district_students) and their version, read in one
    REPEATABLE READ transaction of their own (one snapshot, no lock): before the lock, an
    upload reads them with this; under the lock the same version means they still hold."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        version = students_version(conn, district.district_id)
        return version, load_district_students(conn, district)


def load_snapshot(
    conn: psycopg.Connection,
    district: District,
    rows: pd.DataFrame,
    students: pd.DataFrame,
    match: RowMatch,
    ahead: Executor | None = None,
    lock_claimed: bool = True,
) -> DistrictSnapshot:
    """The district's state for a plan of `rows`, given its `students` (read by
    load_district_students) and the rows' `match` to them (core.plan.match_rows).

    With `ahead`, the holders of the file's new usernames are looked up on it: the
    snapshot's taken_usernames is then the function that waits for them, and the
    connection is that lookup's alone until the plan has called it.

    `lock_claimed`: lock the usernames the file gives to students (lock_usernames); a dry
    run, which writes nothing, does not (it must not keep other uploads waiting)."""
    d = district.district_id
    bin_available = conn.execute(
        "SELECT size - used FROM orders WHERE order_id = %s", (district.enterprise_order_id,)
    ).fetchone()[0]
    schools = copy_out(
        conn,
        "SELECT code, school_id, active, school_id = %s AS holding_bin FROM schools "
        "WHERE district_id = %s",
        (district.holding_bin_school_id, d),
        {
            "code": pa.string(),
            "school_id": pa.int64(),
            "active": pa.bool_(),
            "holding_bin": pa.bool_(),
        },
    )
    # no one else can hold a row's own username: on a nightly file that leaves only the
    # new and renamed students' usernames to lock and to look up in the database
    at = np.flatnonzero(~match.own_usernames)
    claimed = pd.DataFrame(
        {
            "username_lower": pd.Series(match.username_lower.take(at), dtype="str"),
            "student_id": rows["student_id"].iloc[at].to_numpy(),
        }
    )
    if lock_claimed:
        lock_usernames(conn, claimed["username_lower"])
    lookup = functools.partial(usernames_held_by_others, conn, d, claimed)
    return DistrictSnapshot(
        district_id=d,
        enterprise_order_id=district.enterprise_order_id,
        bin_available=int(bin_available),
        schools=schools,
        students=students,
        taken_usernames=lookup() if ahead is None else ahead.submit(lookup).result,
        grades=frozenset(district.grades) if district.grades is not None else None,
    )
