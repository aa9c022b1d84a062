"""The fleet status's cost at scale: its one query over all districts and the ranking, on a
MY Access database with a year of uploads.

    .venv/bin/python -m bench.fleet_status --districts 2000 --days 365

1. a migrated database ``<db>`` with N districts (``expected_by`` 06:00 in their time
   zone, an Enterprise order each) and one upload per district and night for ``--days``
   nights (COPY): mostly processed with a few errors; some rejected, held, received (a
   crashed run), some districts quiet for days, some with few licenses left;
2. ``db.fleet.district_facts`` (the query of the asset and of ``eams fleet status``) and
   ``core.fleet.fleet_status`` (the ranking) timed, median of ``--repeat`` runs, and the
   query's EXPLAIN (ANALYZE, BUFFERS) totals;
3. the same query without ``uploads_held_idx`` (sql/020), for comparison.

The last line of the output is one JSON object with every figure.
"""

import argparse
import datetime as dt
import json
import random
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/eams_fleet_status"
NOW = dt.datetime(2026, 6, 1, 15, 0, tzinfo=dt.UTC)
ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True)


def fill(url: str, districts: int, days: int, seed: int) -> dict[str, int]:
    """The districts and their year of uploads; returns how many of each kind."""
    from eams_pipeline.db import migrations

    rnd = random.Random(seed)
    kinds = {"quiet": 0, "rejected_last": 0, "held": 0, "stuck": 0, "low_licenses": 0}
    with psycopg.connect(url) as conn:
        migrations.upgrade(conn)
        with conn.cursor().copy(
            "COPY districts (code, name, timezone, expected_by, created_at) FROM STDIN"
        ) as copy:
            for i in range(districts):
                copy.write_row(
                    (
                        f"F{i:05d}",
                        f"District {i}",
                        ZONES[i % 4],
                        "06:00",
                        NOW - dt.timedelta(days=days + 1),
                    )
                )
        ids = conn.execute("SELECT district_id, code FROM districts ORDER BY code").fetchall()
        with conn.cursor().copy(
            "COPY orders (district_id, number, kind, size, used) FROM STDIN"
        ) as copy:
            for district_id, code in ids:
                low = rnd.random() < 0.01
                kinds["low_licenses"] += low
                copy.write_row(
                    (
                        district_id,
                        f"ENT-{code}",
                        "enterprise",
                        1000,
                        990 if low else rnd.randint(0, 900),
                    )
                )
        conn.execute(
            """UPDATE districts d SET enterprise_order_id = o.order_id
               FROM orders o WHERE o.district_id = d.district_id"""
        )
        with conn.cursor().copy(
            """COPY uploads (district_id, upload_key, file_name, received_at, applied_at, status,
                             rows, added, activated, deactivated, updated, unchanged, errors,
                             guard_trip) FROM STDIN"""
        ) as copy:
            for district_id, code in ids:
                quiet = rnd.random() < 0.01  # nothing for the last 4 nights
                kinds["quiet"] += quiet
                last_kind = rnd.random()
                for day in range(days, 0, -1):
                    if quiet and day <= 4:
                        continue
                    at = NOW - dt.timedelta(days=day, hours=-12, seconds=rnd.randint(0, 3600))
                    status, rows, errors, trip = "processed", 1000, 0, None
                    if rnd.random() < 0.3:
                        status, errors = "partially_processed", rnd.randint(1, 10)
                    if rnd.random() < 0.01:
                        status, rows, errors = "rejected", 0, 0
                    if day == 1 and not quiet:
                        if last_kind < 0.01:
                            status, rows, errors = "rejected", 0, 0
                            kinds["rejected_last"] += 1
                        elif last_kind < 0.02:
                            status, trip = "held", '{"rule": "max_deactivated_pct"}'
                            kinds["held"] += 1
                        elif last_kind < 0.025:
                            status, rows = "received", None
                            kinds["stuck"] += 1
                    applied = (
                        at if status in ("processed", "partially_processed", "rejected") else None
                    )
                    if rows is None:
                        counts: tuple = (None,) * 7
                    elif rows == 0:  # a file-level rejection: no row applied
                        counts = (0,) * 7
                    else:
                        counts = (rows, 0, 0, 0, 5, rows - 5 - errors, errors)
                    copy.write_row(
                        (
                            district_id,
                            f"{code}-{at:%Y%m%dT%H%M%S%fZ}",
                            "students.csv",
                            at,
                            applied,
                            status,
                            *counts,
                            trip,
                        )
                    )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE uploads")
        conn.execute("VACUUM ANALYZE districts")
        conn.execute("VACUUM ANALYZE orders")
        kinds["uploads"] = conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
    return kinds


def measure(url: str, repeat: int) -> dict[str, Any]:
    from eams_pipeline.core.fleet_ranking import fleet_status
    from eams_pipeline.db.fleet_facts import _FACTS, district_facts, query_params

    query, rank = [], []
    with psycopg.connect(url) as conn:
        for _ in range(repeat):
            t0 = time.perf_counter()
            facts = district_facts(conn)
            t1 = time.perf_counter()
            status = fleet_status(facts, NOW)
            t2 = time.perf_counter()
            conn.rollback()
            query.append(t1 - t0)
            rank.append(t2 - t1)
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + _FACTS, query_params()
        ).fetchone()[0][0]
    return {
        "query_seconds_median": round(statistics.median(query), 4),
        "rank_seconds_median": round(statistics.median(rank), 4),
        "server_execution_ms": round(plan["Execution Time"], 1),
        "shared_buffers_hit": plan["Plan"].get("Shared Hit Blocks"),
        "shared_buffers_read": plan["Plan"].get("Shared Read Blocks"),
        "needs_attention": status.needs_attention,
        "counts": dict(status.counts),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.fleet_status", description=__doc__.splitlines()[0]
    )
    p.add_argument("--districts", type=int, default=2000)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--database-url", default=DEFAULT_URL)
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    name = conninfo_to_dict(args.database_url)["dbname"]
    with _admin(args.database_url) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    result: dict[str, Any] = {"args": vars(args)}
    try:
        t0 = time.monotonic()
        result["data"] = fill(args.database_url, args.districts, args.days, args.seed)
        result["fill_seconds"] = round(time.monotonic() - t0, 1)
        result["with_held_index"] = measure(args.database_url, args.repeat)
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute("DROP INDEX uploads_held_idx")
        result["without_held_index"] = measure(args.database_url, args.repeat)
    finally:
        if not args.keep:
            with _admin(args.database_url) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    w, wo = result["with_held_index"], result["without_held_index"]
    print(
        f"{args.districts} districts, {result['data']['uploads']:,} uploads: query "
        f"{w['query_seconds_median']:.3f} s (server {w['server_execution_ms']} ms), ranking "
        f"{w['rank_seconds_median']:.3f} s; without uploads_held_idx: query "
        f"{wo['query_seconds_median']:.3f} s (server {wo['server_execution_ms']} ms)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
