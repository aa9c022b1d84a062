"""Usernames are unique across all districts: an upload locks the usernames it may give
before it reads who holds them (advisory locks held until commit), then looks the holders
up in one set-based query."""

from __future__ import annotations

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from eams_pipeline.db.bulk_copy import copy_in, copy_out
from eams_pipeline.db.connection import local_settings

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


def usernames_held_by_others(
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


# Left to itself the planner hashes all of students (every district's, in batches spilled
# to disk at the default work_mem) to find the holders of a night's ~100k new usernames;
# probing the username index once per file username is about twice as fast (figures:
# bench/RESULTS.md, "Figures behind the documents"), and stays proportional to the file
# when students holds thousands of districts. When the file claims a good share of the
# table (a large district's onboarding into a small database), the planner's hash join is
# left as it is.
_PROBE_SETTINGS = {"enable_hashjoin": "off", "enable_mergejoin": "off"}


def _probe_by_index(conn: psycopg.Connection, claimed: int) -> dict[str, str]:
    """The settings for looking up `claimed` usernames: index probes unless they are more
    than a quarter of the students table (the planner's estimate of its rows)."""
    (rows,) = conn.execute(
        "SELECT reltuples FROM pg_class WHERE oid = 'students'::regclass"
    ).fetchone()
    return _PROBE_SETTINGS if claimed * 4 < rows else {}
