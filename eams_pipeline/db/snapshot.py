"""Reading the district's current state for the plan, under the district's lock.

`lock_district` (db.districts) takes a row lock on the district: every writer of a
district's students or orders (an upload, `eams setup load`) takes it first, so two
uploads of one district never apply at the same time, and the snapshot a plan is made
from stays true until the transaction commits.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from eams_pipeline.core.plan import (
    DistrictSnapshot,
    lower_usernames,
    own_usernames,
    student_positions,
)
from eams_pipeline.db.connection import local_settings
from eams_pipeline.db.districts import District


def copy_out(
    conn: psycopg.Connection, query: str, params: tuple, types: dict[str, pa.DataType]
) -> pd.DataFrame:
    """COPY a query's result out as CSV and parse it with pyarrow (fast for large results)."""
    buffer = io.BytesIO()
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT csv, HEADER true)", params) as cp:
        for chunk in cp:
            buffer.write(chunk)
    if buffer.tell() == 0:
        return pd.DataFrame({name: pd.Series(dtype=_pandas_type(t)) for name, t in types.items()})
    buffer.seek(0)
    table = pacsv.read_csv(
        buffer,
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    # nullable integers stay exact (the default would go through float64)
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def _pandas_type(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "Int64"
    if pa.types.is_boolean(t):
        return "bool"
    return "str"


COPY_IN_ROWS = 65_536  # rows converted and sent at a time: the CSV of 1M staged rows is ~0.5 GB


def copy_in(
    conn: psycopg.Connection,
    table: str,
    frame: pd.DataFrame,
    order: np.ndarray | None = None,
    *,
    encoded: Iterable[bytes] | None = None,
) -> None:
    """COPY a frame into a table (columns by name), as CSV written by pyarrow, slice by
    slice: memory holds one slice's Arrow table and CSV text, never the whole frame's.
    `order` (positions in `frame`) sends those rows, in that order, without a sorted or
    filtered copy of the frame. `encoded`: the same rows already made by encode_csv (the
    frame then only names the columns)."""
    if frame.empty:
        return
    columns = ", ".join(frame.columns)
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as cp:
        for chunk in encode_csv(frame, order) if encoded is None else encoded:
            cp.write(chunk)


def encode_csv(frame: pd.DataFrame, order: np.ndarray | None = None) -> Iterator[bytes]:
    """The rows of `frame` (those at `order`, in that order) as COPY's CSV, COPY_IN_ROWS at
    a time."""
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    for start in range(0, len(frame) if order is None else len(order), COPY_IN_ROWS):
        if order is None:
            part = frame.iloc[start : start + COPY_IN_ROWS]
        else:
            part = frame.iloc[order[start : start + COPY_IN_ROWS]]
        sink = io.BytesIO()
        pacsv.write_csv(pa.Table.from_pandas(part, preserve_index=False), sink, options)
        yield sink.getvalue()


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

    Not a COPY: COPY TO sends one protocol message per row, and reading 900k of them is
    ~1 s of Python holding the GIL, which competes with the file's parsing that runs at
    the same time. The server aggregates each column into one value instead (one pass, the
    same row order in every aggregate): the numbers as 8-byte big-endian binaries
    (`int8send`, read by numpy without parsing text: 0.65 s of server time for 900k
    students against 1.05 s for the same as CSV text), the Student IDs and usernames as
    line-separated text (a CHECK keeps line breaks out of both: sql/002, sql/011), and one
    byte of flags per student (active; no password fingerprint). The usernames are
    lower-cased here, by the kernel that lower-cases the file's (core.plan.lower_usernames):
    the same for the ASCII a CHECK holds them to, and `lower()` was 0.17 s of the query's
    0.9 s of server time for 1M students, on the path the match waits for."""
    count, ids, usernames, *numbers, flags = (
        conn.cursor(binary=True).execute(_STUDENTS_QUERY, (district.district_id,)).fetchone()
    )
    if count == 0:
        return pd.DataFrame(
            {name: pd.Series(dtype=_pandas_type(t)) for name, t in _STUDENT_TYPES.items()}
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
    positions: np.ndarray | None = None,
    own: np.ndarray | None = None,
    ahead: Executor | None = None,
    username_lower: pa.Array | None = None,
    lock_claimed: bool = True,
) -> DistrictSnapshot:
    """The district's state for a plan of `rows`, given its `students` (read by
    load_district_students; `positions`: core.plan.student_positions of the rows in them,
    `own`: core.plan.own_usernames of the rows and `username_lower`:
    core.plan.lower_usernames of the rows, when already computed for them).

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
    if positions is None:
        positions, own = student_positions(rows["student_id"], students), None
    if username_lower is None:
        username_lower = lower_usernames(rows["username"])
    if own is None:
        own = own_usernames(username_lower, students, positions)
    # no one else can hold a row's own username: on a nightly file that leaves only the
    # new and renamed students' usernames to lock and to look up in the database
    at = np.flatnonzero(~own)
    claimed = pd.DataFrame(
        {
            "username_lower": pd.Series(username_lower.take(at), dtype="str"),
            "student_id": rows["student_id"].iloc[at].to_numpy(),
        }
    )
    if lock_claimed:
        lock_usernames(conn, claimed["username_lower"])
    lookup = functools.partial(_usernames_held_by_others, conn, d, claimed)
    return DistrictSnapshot(
        district_id=d,
        enterprise_order_id=district.enterprise_order_id,
        bin_available=int(bin_available),
        schools=schools,
        students=students,
        taken_usernames=lookup() if ahead is None else ahead.submit(lookup).result,
        grades=frozenset(district.grades) if district.grades is not None else None,
        positions=positions,
        own_usernames=own,
    )


# Usernames are unique across districts, whose uploads run concurrently (each holds only
# its own district's lock). An upload that gives students usernames they do not hold yet
# locks those usernames (advisory locks held until commit) BEFORE it reads who holds them:
# a second upload claiming one of them waits until the first commits, then sees it taken
# (USERNAME_TAKEN), exactly as if the two had run one after the other. Up to
# USERNAME_LOCK_LIMIT usernames are locked one by one (in sorted order: no deadlock), under
# a shared lock on the whole namespace; a file claiming more takes the namespace lock
# exclusively instead, so the locks an upload holds stay bounded (the server's lock table
# is shared). Two large uploads that both create many students therefore run one after
# the other; small ones only wait for an upload claiming one of the same usernames.
USERNAME_LOCK_SPACE = 0x45414D53  # "EAMS": advisory locks (USERNAME_LOCK_SPACE, hashtext(u))
USERNAME_LOCK_ALL = (0x45414D54, 0)  # the lock on the whole namespace
USERNAME_LOCK_LIMIT = 256


def lock_usernames(conn: psycopg.Connection, usernames_lower: pd.Series) -> None:
    """Lock the usernames an upload may give to students (lower-cased) until the
    transaction ends."""
    lowered = usernames_lower.dropna()
    if lowered.empty:
        return
    if _more_distinct_than(lowered, USERNAME_LOCK_LIMIT):
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", USERNAME_LOCK_ALL)
        return
    wanted = sorted(set(lowered))
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", USERNAME_LOCK_ALL)
    conn.execute(
        "SELECT count(pg_advisory_xact_lock(%s, k)) FROM ("
        "  SELECT DISTINCT hashtext(u) AS k FROM unnest(%s::text[]) u ORDER BY k"
        ") keys",
        (USERNAME_LOCK_SPACE, wanted),
    )


def _more_distinct_than(values: pd.Series, limit: int) -> bool:
    """Whether `values` holds more than `limit` distinct values: counted on a prefix first
    (a first night's 1M usernames answer from their first few thousand), on all of them
    only when the prefix does not say (no Python set of 1M strings either way)."""
    if len(values) <= limit:
        return False
    head = values.iloc[: 16 * (limit + 1)]
    return head.nunique() > limit or (len(head) < len(values) and values.nunique() > limit)


def _usernames_held_by_others(
    conn: psycopg.Connection, district_id: int, claimed: pd.DataFrame
) -> pd.DataFrame:
    """Holders of the claimed usernames (username_lower, student_id: the row's), except
    each row's own student."""
    # not deduplicated: a username repeated on the file finds its holder twice, which the
    # plan takes once (core.plan._username_taken); hashing 1M pairs to save that costs more
    wanted = claimed.dropna(subset=["username_lower"])
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS file_usernames (username_lower text, student_id text) "
        "ON COMMIT DELETE ROWS"
    )
    conn.execute("TRUNCATE file_usernames")
    # in the username index's order: its probes then walk it from one leaf to the next
    # instead of at random
    order = pc.sort_indices(pa.array(wanted["username_lower"], pa.large_string())).to_numpy()
    copy_in(conn, "file_usernames", wanted, order)
    with local_settings(conn, _probe_by_index(conn, len(wanted))):
        return copy_out(
            conn,
            "SELECT f.username_lower, s.district_id, s.student_id FROM file_usernames f "
            "JOIN students s ON lower(s.username) = f.username_lower "
            "WHERE NOT (s.district_id = %s AND s.student_id IS NOT DISTINCT FROM f.student_id)",
            (district_id,),
            {"username_lower": pa.string(), "district_id": pa.int64(), "student_id": pa.string()},
        )


# Left to itself the planner hashes all of students (every district's: 0.4 s for 900k, in
# 16 batches spilled to disk at the default work_mem) to find the holders of a night's
# ~100k new usernames; probing the username index once per file username is 0.2 s, and
# stays proportional to the file when students holds thousands of districts. When the file
# claims a good share of the table (a large district's onboarding into a small database),
# the planner's hash join is left as it is.
_PROBE_SETTINGS = {"enable_hashjoin": "off", "enable_mergejoin": "off"}


def _probe_by_index(conn: psycopg.Connection, claimed: int) -> dict[str, str]:
    """The settings for looking up `claimed` usernames: index probes unless they are more
    than a quarter of the students table (the planner's estimate of its rows)."""
    (rows,) = conn.execute(
        "SELECT reltuples FROM pg_class WHERE oid = 'students'::regclass"
    ).fetchone()
    return _PROBE_SETTINGS if claimed * 4 < rows else {}
