"""The durable cache of argon2id hashes computed before an upload's apply transaction.

Hashing a night's new passwords takes minutes; it runs before the district is locked, in
batches that each commit into `password_hash_cache` (sql/009). The apply transaction then
takes the hashes with one set-based join, and removes the rows it used. A row is keyed by
(district, Student ID, keyed password fingerprint): it serves only that student with that
password. Only hashes are stored, never a password.
"""

from __future__ import annotations

import pandas as pd
import psycopg
import pyarrow as pa

from eams_pipeline.db.bulk_copy import copy_in, copy_out
from eams_pipeline.db.connection import local_settings

_KEYS = """CREATE TEMP TABLE IF NOT EXISTS password_keys (
    k bigint NOT NULL, student_id text NOT NULL, password_fp bigint NOT NULL
) ON COMMIT DELETE ROWS"""


def _stage_keys(conn: psycopg.Connection, keys: pd.DataFrame) -> None:
    """`keys` (k, student_id, password_fp) into the temporary table password_keys."""
    conn.execute(_KEYS)
    conn.execute("TRUNCATE password_keys")
    if not keys.empty:
        copy_in(conn, "password_keys", keys[["k", "student_id", "password_fp"]])
        conn.execute("ANALYZE password_keys")


def to_hash(conn: psycopg.Connection, district_id: int, keys: pd.DataFrame) -> pd.Series:
    """The `k` of the keys (k, student_id, password_fp) whose password is not already
    hashed in the cache, in `k` order (the caller has left out the passwords the stored
    students already have, and asks only when `has_cached`).

    Up to PROBE_MAX_KEYS keys, each is one probe of the cache's primary key (`OFFSET 0`
    keeps the subquery a per-key SubPlan): the cache is a table every night fills and
    empties, and until a VACUUM its index is mostly dead entries, which the planner's
    join, sure from the statistics that the district has next to nothing cached, reads
    all of for the district (the probes are much faster on such a cache: bench/RESULTS.md,
    "Figures behind the documents")."""
    if keys.empty:
        return pd.Series([], dtype="int64")
    probe = "OFFSET 0" if len(keys) <= PROBE_MAX_KEYS else ""
    with conn.transaction():
        _stage_keys(conn, keys)
        found = copy_out(
            conn,
            f"""SELECT p.k FROM password_keys p
               WHERE NOT EXISTS (
                   SELECT 1 FROM password_hash_cache c WHERE c.district_id = %s
                      AND c.student_id = p.student_id AND c.password_fingerprint = p.password_fp
                   {probe})
               ORDER BY p.k""",
            (district_id,),
            {"k": pa.int64()},
        )
    return found["k"].astype("int64")


# keys asked of the cache one index probe each (~3 us a key); more go to the planner's join
PROBE_MAX_KEYS = 200_000


def store(conn: psycopg.Connection, district_id: int, batch: pd.DataFrame) -> None:
    """One batch of (student_id, password_fp, password_hash), in the caller's transaction.
    A row already there (a concurrent run of the same file) is kept."""
    conn.execute(
        """INSERT INTO password_hash_cache
               (district_id, student_id, password_fingerprint, password_hash)
           SELECT %s, b.student_id, b.fp, b.h
           FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS b(student_id, fp, h)
           ON CONFLICT DO NOTHING""",
        (
            district_id,
            batch["student_id"].tolist(),
            [int(v) for v in batch["password_fp"]],
            batch["password_hash"].tolist(),
        ),
    )


def rekey(conn: psycopg.Connection, district_id: int, moves: pd.DataFrame) -> int:
    """Move cached hashes to the current server secret's fingerprint, in the caller's
    transaction: `moves` (student_id, password_fp_before, password_fp) are the rows' keys
    under a previous secret and under the current one (a hash cached before a rotation,
    e.g. of a held file, then serves its approval). A hash already cached under the new
    key is kept (the old row goes). Returns how many moved."""
    if moves.empty:
        return 0
    cur = conn.execute(
        """WITH moved AS (
               DELETE FROM password_hash_cache c
               USING unnest(%s::text[], %s::bigint[], %s::bigint[]) AS m(student_id, old, new)
               WHERE c.district_id = %s AND c.student_id = m.student_id
                 AND c.password_fingerprint = m.old
               RETURNING c.district_id, c.student_id, m.new, c.password_hash, c.created_at)
           INSERT INTO password_hash_cache
               (district_id, student_id, password_fingerprint, password_hash, created_at)
           SELECT * FROM moved
           ON CONFLICT DO NOTHING""",
        (
            moves["student_id"].tolist(),
            [int(v) for v in moves["password_fp_before"]],
            [int(v) for v in moves["password_fp"]],
            district_id,
        ),
    )
    return cur.rowcount


def has_cached(conn: psycopg.Connection, district_id: int) -> bool:
    """Whether the district has any cached hash (the usual night: none, the last apply
    used and removed them)."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM password_hash_cache WHERE district_id = %s)",
        (district_id,),
    ).fetchone()[0]


def take(conn: psycopg.Connection, district_id: int, keys: pd.DataFrame) -> pd.DataFrame:
    """The cached hashes of the keys (k, student_id, password_fp): a frame (k, password_hash)
    of those found."""
    _stage_keys(conn, keys)
    if keys.empty:
        return pd.DataFrame({"k": pd.Series(dtype="int64"), "password_hash": pd.Series(dtype=str)})
    found = copy_out(
        conn,
        """SELECT p.k, c.password_hash FROM password_keys p
           JOIN password_hash_cache c ON c.district_id = %s AND c.student_id = p.student_id
                                     AND c.password_fingerprint = p.password_fp""",
        (district_id,),
        {"k": pa.int64(), "password_hash": pa.string()},
    )
    found["k"] = found["k"].astype("int64")
    return found


def forget(
    conn: psycopg.Connection,
    district_id: int,
    new_keys: tuple[int, int] | None,
    student_ids: list[str],
    fingerprints: list[int],
) -> int:
    """Remove the cache rows of the hashes an apply used: the passwords now stored by the
    district's students with keys in `new_keys` (first, last: the students the apply has
    just inserted, read on the server) and the (Student ID, fingerprint) pairs given (the
    changed passwords of stored students). Hashes of other passwords (a held file's, a
    failed row's, one changed in between) stay until they expire.

    The new students' keys are not sent: 1M Student IDs and fingerprints as array
    parameters cost seconds of Python on an onboarding. The rows are found by one hash
    join (forced: the statistics of tables just loaded would have the planner probe the
    cache once per row, far slower for 1M) and deleted by row id in the table's order (a
    TID scan sorts its list), so each page of the cache is read and dirtied once, where a
    DELETE driven by the join visits them at random (figures: bench/RESULTS.md)."""
    first, last = new_keys if new_keys is not None else (0, -1)
    if first > last and not student_ids:
        return 0
    with local_settings(conn, _FORGET_SETTINGS):
        cur = conn.execute(
            """DELETE FROM password_hash_cache WHERE ctid = ANY(ARRAY(
                   SELECT c.ctid
                   FROM password_hash_cache c
                   JOIN (SELECT student_id, password_fingerprint FROM students
                         WHERE student_pk BETWEEN %(first)s AND %(last)s
                           AND district_id = %(district)s
                         UNION ALL
                         SELECT * FROM unnest(%(ids)s::text[], %(fps)s::bigint[])
                        ) AS used (student_id, password_fingerprint)
                     ON c.student_id = used.student_id
                    AND c.password_fingerprint = used.password_fingerprint
                   WHERE c.district_id = %(district)s))""",
            {
                "district": district_id,
                "first": first,
                "last": last,
                "ids": student_ids,
                "fps": fingerprints,
            },
        )
    return cur.rowcount


_FORGET_SETTINGS = {"enable_nestloop": "off", "enable_mergejoin": "off"}


def expire(conn: psycopg.Connection, days: int) -> int:
    """Remove the cache rows older than `days` (hashes of rows never applied: failed rows,
    held or discarded files, crashed runs never re-run)."""
    cur = conn.execute(
        "DELETE FROM password_hash_cache WHERE created_at < now() - make_interval(days => %s)",
        (days,),
    )
    return cur.rowcount
