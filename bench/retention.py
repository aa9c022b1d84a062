"""Run retention benchmark: the Dagster instance's size after a simulated year of nightly
upload runs, with and without the run retention job.

    .venv/bin/python -m bench.retention --districts 20 --days 365

Everything on the local PostgreSQL; its databases are dropped at the end (unless --keep):

1. two empty Dagster storages (``<db>_without``, ``<db>_with``) opened with the shipped
   dagster.yaml (PostgreSQL run, event-log and schedule storage), and a MY Access database
   ``<db>`` (migrated) whose ``uploads`` table holds the year's uploads, 1 in
   ``--held-every`` of them held (their runs must stay);
2. a template run, executed by Dagster on each instance: a stand-in of ``upload_job`` with
   the shape of a real upload run (the four upload assets with their metadata, the
   change_guard check, the steps' log lines: ~50 events, ~45 kB of event log, as a real
   run of the test suite's clean upload);
3. the year: every day, one run per district copied from the template through Dagster's
   API (``add_run``, ``store_event`` for each event, the run id and time replaced), tagged
   ``eams/district`` and ``eams/upload_key``, then dated to its day (``UPDATE
   runs.create_timestamp``: the benchmark's time machine, Dagster dates runs itself).
   *with*: after each day, ``enforce_run_retention`` at that day's 05:00 (what
   ``run_retention_job`` runs), and a plain ``VACUUM`` of the tables every 7 days
   (autovacuum's part: deleted rows' space is reused, not returned);
4. sizes: ``pg_total_relation_size`` of each table of the instance and
   ``pg_database_size``, rows per table; the per-run cost and a linear extrapolation to
   2,000 districts (with retention: 90 days of runs plus the free space the year left).

The last line of the output is one JSON object with every figure.
"""

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/eams_retention"
ROOT = Path(__file__).resolve().parent.parent
TABLES = (
    "event_logs",
    "runs",
    "run_tags",
    "asset_event_tags",
    "asset_check_executions",
    "asset_keys",
    "snapshots",
)
FLEET = 2000
YEAR_START = dt.datetime(2025, 8, 1, 7, 0, tzinfo=dt.UTC)  # 02:00 in Chicago: the nightly run


# ---------------------------------------------------------------------------------------
# The stand-in upload job: the shape and metadata of a real upload run
# ---------------------------------------------------------------------------------------


def template_job() -> tuple[Any, list[Any]]:
    counts = {"rows": 20, "added": 2, "activated": 0, "deactivated": 1, "updated": 3}
    counts |= {"unchanged": 13, "errors": 1}
    steps = ("read", "validate", "fingerprints", "students", "match", "hash_select", "hash")
    steps += ("lock", "snapshot", "plan", "hash_inline", "apply", "record")
    preview = "| line | student | column | code | message |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {i + 2} | S{i:05d} | Grade | INVALID_GRADE | Grade must be K or 1-12. Found: 13 |"
        for i in range(20)
    )

    @dg.asset(group_name="bench_uploads")
    def upload_file(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        context.log.info("claimed incoming/students.csv as processed/students_<key>.csv")
        context.log.info("archived 1,905 bytes (sha256 9f86d081884c7d65...)")
        return dg.MaterializeResult(
            metadata={
                "processed_path": "processed/students_D0001-20260114T020000123456Z.csv",
                "archive_path": "/var/eams/archive/D0001/D0001-20260114T020000123456Z.csv.fernet",
                "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "bytes": 1905,
            }
        )

    @dg.asset(
        group_name="bench_uploads",
        deps=[upload_file],
        check_specs=[dg.AssetCheckSpec("change_guard", asset="upload_outcome")],
    )
    def upload_outcome(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        for step in steps:
            context.log.info(f"{step} done in 0.012 s")
        return dg.MaterializeResult(
            metadata={
                "status": "partially_processed",
                **counts,
                "error_codes": dg.MetadataValue.json({"INVALID_GRADE": 1}),
                **{f"seconds_{s}": 0.012 for s in steps},
                "hashed_passwords": 2,
                "cached_hashes": 0,
                "hash_rate_per_s": 88.1,
            },
            check_results=[
                dg.AssetCheckResult(
                    passed=True, metadata={"deactivated_pct": 4.0, "updated_pct": 12.0}
                )
            ],
        )

    @dg.asset(group_name="bench_uploads", deps=[upload_outcome])
    def error_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        context.log.info("published errors/students_errors_123456.csv (1 error)")
        return dg.MaterializeResult(
            metadata={
                **counts,
                "error_file": "errors/students_errors_123456.csv",
                "preview": dg.MetadataValue.md(preview),
            }
        )

    @dg.asset(group_name="bench_uploads", deps=[error_report])
    def district_email(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        context.log.info("emailed sis-admin@d0001.example.org, it@d0001.example.org")
        return dg.MaterializeResult(
            metadata={
                "to": "sis-admin@d0001.example.org, it@d0001.example.org",
                "subject": "eAMS student update PARTIALLY PROCESSED: D0001",
                "raw_file_removed": True,
            }
        )

    return dg.define_asset_job(
        "upload_job",
        selection=dg.AssetSelection.groups("bench_uploads"),
        executor_def=dg.in_process_executor,
    ), [upload_file, upload_outcome, error_report, district_email]


# ---------------------------------------------------------------------------------------
# Databases and instances
# ---------------------------------------------------------------------------------------


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True)


def recreate(url: str, name: str) -> str:
    with _admin(url) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(url, dbname=name)


def synchronous_commit(url: str, name: str, on: bool) -> None:
    """Filling a year commits every event on its own (as Dagster does): ~45 ms each on this
    machine's disk. Off while filling (sizes are the same), on for the timed retention."""
    with _admin(url) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = {}").format(
                sql.Identifier(name), sql.SQL("on" if on else "off")
            )
        )


def drop(url: str, name: str) -> None:
    with _admin(url) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def instance_on(url: str, home: Path) -> Iterator[Any]:
    """A Dagster instance with the shipped dagster.yaml on the database of ``url``."""
    params = conninfo_to_dict(url)
    os.environ.update(
        {
            "EAMS_DAGSTER_PG_HOST": str(params.get("host", "127.0.0.1")),
            "EAMS_DAGSTER_PG_PORT": str(params.get("port", "5432")),
            "EAMS_DAGSTER_PG_USER": str(params.get("user", "postgres")),
            "EAMS_DAGSTER_PG_PASSWORD": str(params.get("password", "")),
            "EAMS_DAGSTER_PG_DB": str(params["dbname"]),
        }
    )
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def sizes(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        tables = {
            t: {
                "bytes": conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0],
                "rows": conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
                ).fetchone()[0],
            }
            for t in TABLES
        }
        database = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"database_bytes": database, "tables": tables}


def vacuum(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for t in TABLES:
            conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(t)))


# ---------------------------------------------------------------------------------------
# The year
# ---------------------------------------------------------------------------------------


def district(i: int) -> str:
    return f"R{i:04d}"


def upload_key(code: str, at: dt.datetime) -> str:
    return f"{code}-{at:%Y%m%dT%H%M%S%fZ}"


def load_uploads(url: str, districts: int, days: int, held_every: int) -> set[str]:
    """The year's uploads in the MY Access database; returns the held keys."""
    from eams_pipeline.db import migrations

    held: set[str] = set()
    with psycopg.connect(url) as conn:
        migrations.upgrade(conn)
        rows = []
        n = 0
        for i in range(districts):
            code = district(i)
            conn.execute("INSERT INTO districts (code, name) VALUES (%s, %s)", (code, code))
            for day in range(days):
                at = YEAR_START + dt.timedelta(days=day, seconds=i)
                n += 1
                status = "held" if n % held_every == 0 else "processed"
                key = upload_key(code, at)
                if status == "held":
                    held.add(key)
                rows.append((code, key, at, status))
        ids = dict(conn.execute("SELECT code, district_id FROM districts").fetchall())
        with conn.cursor().copy(
            "COPY uploads (district_id, upload_key, file_name, received_at, status, applied_at) "
            "FROM STDIN"
        ) as copy:
            for code, key, at, status in rows:
                copy.write_row(
                    (
                        ids[code],
                        key,
                        "students.csv",
                        at,
                        status,
                        at if status == "processed" else None,
                    )
                )
        conn.commit()
    return held


TEMPLATE_DISTRICT = "R9999"  # as long as every district code: the copies keep its size
TEMPLATE_KEY = upload_key(TEMPLATE_DISTRICT, YEAR_START)

_CLONE = """
CREATE TEMP TABLE new_runs (run_id text, code text, key text) ON COMMIT DROP;
"""
_CLONE_ROWS = [
    # the runs and their tags
    """INSERT INTO runs (run_id, snapshot_id, pipeline_name, mode, status, run_body, partition,
                         partition_set, create_timestamp, update_timestamp, start_time,
                         end_time, backfill_id)
       SELECT n.run_id, r.snapshot_id, r.pipeline_name, r.mode, r.status,
              replace(replace(replace(r.run_body, %(tpl)s, n.run_id), %(tkey)s, n.key),
                      %(tcode)s, n.code),
              r.partition, r.partition_set, %(at)s, %(at)s,
              extract(epoch FROM %(at)s::timestamptz), extract(epoch FROM %(at)s::timestamptz)
                  + (r.end_time - r.start_time), r.backfill_id
       FROM runs r CROSS JOIN new_runs n WHERE r.run_id = %(tpl)s ORDER BY n.run_id""",
    """INSERT INTO run_tags (run_id, key, value)
       SELECT n.run_id, t.key, replace(replace(t.value, %(tkey)s, n.key), %(tcode)s, n.code)
       FROM run_tags t CROSS JOIN new_runs n WHERE t.run_id = %(tpl)s""",
    # the events, their ids drawn first so that the asset tags and checks can point at them
    """CREATE TEMP TABLE new_events ON COMMIT DROP AS
       SELECT nextval(pg_get_serial_sequence('event_logs', 'id')) AS id, e.id AS old_id,
              n.run_id, n.code, n.key
       FROM event_logs e CROSS JOIN new_runs n WHERE e.run_id = %(tpl)s
       ORDER BY n.run_id, e.id""",
    """INSERT INTO event_logs (id, run_id, event, dagster_event_type, timestamp, step_key,
                               asset_key, partition)
       SELECT ne.id, ne.run_id,
              replace(replace(replace(e.event, %(tpl)s, ne.run_id), %(tkey)s, ne.key),
                      %(tcode)s, ne.code),
              e.dagster_event_type, %(at)s + (e.timestamp - %(t0)s), e.step_key, e.asset_key,
              e.partition
       FROM new_events ne JOIN event_logs e ON e.id = ne.old_id ORDER BY ne.id""",
    """INSERT INTO asset_event_tags (event_id, asset_key, key, value, event_timestamp)
       SELECT ne.id, a.asset_key, a.key, a.value, %(at)s
       FROM asset_event_tags a JOIN new_events ne ON ne.old_id = a.event_id""",
    """INSERT INTO asset_check_executions (asset_key, check_name, partition, run_id,
              execution_status, evaluation_event, evaluation_event_timestamp,
              evaluation_event_storage_id, materialization_event_storage_id, create_timestamp)
       SELECT c.asset_key, c.check_name, c.partition, n.run_id, c.execution_status,
              replace(c.evaluation_event, %(tpl)s, n.run_id), %(at)s, ev.id, mat.id, %(at)s
       FROM asset_check_executions c CROSS JOIN new_runs n
       LEFT JOIN new_events ev ON ev.old_id = c.evaluation_event_storage_id
                              AND ev.run_id = n.run_id
       LEFT JOIN new_events mat ON mat.old_id = c.materialization_event_storage_id
                               AND mat.run_id = n.run_id
       WHERE c.run_id = %(tpl)s""",
]


class Cloner:
    """Copies the template run (executed by Dagster) into new runs, row for row, inside
    PostgreSQL: its run, tags, events, asset event tags and check executions with the run
    id, district, upload key and times replaced (strings of the same length: the copies
    have the template's size). Filling through ``store_event`` costs ~33 ms per event on
    this machine (Dagster opens a connection per statement), ~3 hours for 7,300 runs."""

    def __init__(self, url: str, template_run_id: str) -> None:
        self.url = url
        self.template = template_run_id
        with psycopg.connect(url) as conn:
            self.t0 = conn.execute(
                "SELECT min(timestamp) FROM event_logs WHERE run_id = %s", (template_run_id,)
            ).fetchone()[0]

    def clone_day(self, districts: list[str], at: dt.datetime) -> list[str]:
        rows = [
            (str(uuid.uuid4()), code, upload_key(code, at + dt.timedelta(seconds=i)))
            for i, code in enumerate(districts)
        ]
        params = {
            "tpl": self.template,
            "tkey": TEMPLATE_KEY,
            "tcode": TEMPLATE_DISTRICT,
            "at": at.replace(tzinfo=None),
            "t0": self.t0,
        }
        with psycopg.connect(self.url) as conn:
            conn.execute(_CLONE)
            with conn.cursor().copy("COPY new_runs FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            for statement in _CLONE_ROWS:
                conn.execute(statement, params)
        return [r[0] for r in rows]


def simulate(
    args: argparse.Namespace, url: str, eams_url: str, home: Path, with_retention: bool
) -> dict[str, Any]:
    from eams_pipeline.orchestration.partitions import DISTRICT_TAG
    from eams_pipeline.orchestration.run_retention_job import UPLOAD_KEY_TAG, enforce_run_retention

    job, assets = template_job()
    defs = dg.Definitions(assets=assets, jobs=[job])
    out: dict[str, Any] = {"retention": with_retention, "retention_passes": []}
    with instance_on(url, home) as instance, psycopg.connect(eams_url) as eams:
        template = defs.resolve_job_def("upload_job").execute_in_process(
            instance=instance,
            tags={DISTRICT_TAG: TEMPLATE_DISTRICT, UPLOAD_KEY_TAG: TEMPLATE_KEY},
        )
        assert template.success
        cloner = Cloner(url, template.run_id)
        with psycopg.connect(url) as conn:
            out["template"] = dict(
                zip(
                    ("events", "event_log_bytes"),
                    conn.execute(
                        """SELECT count(*), sum(pg_column_size(e.*)) FROM event_logs e
                           WHERE run_id = %s""",
                        (template.run_id,),
                    ).fetchone(),
                    strict=True,
                )
            )
        # the schema, the snapshots and the template run (the newest run: never deleted)
        out["empty"] = sizes(url)
        started = time.monotonic()
        clone_seconds = 0.0
        for day in range(args.days):
            t0 = time.monotonic()
            cloner.clone_day(
                [district(i) for i in range(args.districts)], YEAR_START + dt.timedelta(days=day)
            )
            clone_seconds += time.monotonic() - t0
            if with_retention:
                now = YEAR_START + dt.timedelta(days=day, hours=22)  # 05:00 UTC the next day
                report = enforce_run_retention(
                    instance, eams, now=now, days=args.retention_days, batch_size=500
                )
                out["retention_passes"].append(
                    {
                        "day": day,
                        "deleted": report.deleted,
                        "seconds": round(report.seconds, 3),
                        "scanned": report.scanned,
                    }
                )
                if day % 7 == 6:
                    vacuum(url)
            if day % 30 == 29:
                print(f"  day {day + 1}: {time.monotonic() - started:.0f} s", file=sys.stderr)
        out["clone_seconds"] = round(clone_seconds, 1)
        out["runs_left"] = len(instance.get_run_ids()) - 1  # not the template
    out["size"] = sizes(url)
    passes = [p for p in out["retention_passes"] if p["deleted"]]
    if passes:
        out["retention_daily"] = {
            "passes_deleting": len(passes),
            "deleted_median": statistics.median(p["deleted"] for p in passes),
            "seconds_median": statistics.median(p["seconds"] for p in passes),
            "seconds_max": max(p["seconds"] for p in passes),
        }
    del out["retention_passes"]
    return out


def catch_up(url: str, eams_url: str, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The first retention run on the instance that had none for the year."""
    from eams_pipeline.orchestration.run_retention_job import enforce_run_retention

    with instance_on(url, home) as instance, psycopg.connect(eams_url) as eams:
        now = YEAR_START + dt.timedelta(days=args.days - 1, hours=22)
        report = enforce_run_retention(
            instance, eams, now=now, days=args.retention_days, batch_size=500
        )
    vacuum(url)
    return {
        "deleted": report.deleted,
        "kept": report.kept,
        "batches": report.batches,
        "seconds": round(report.seconds, 1),
        "runs_per_second": round(report.deleted / report.seconds, 1) if report.seconds else None,
        "size_after_vacuum": sizes(url),
    }


def extrapolate(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """To 2,000 districts: the empty instance plus the runs' part scaled linearly."""
    runs = args.districts * args.days
    empty = result["without"]["empty"]["database_bytes"]
    without = result["without"]["size"]["database_bytes"] - empty
    with_ = result["with"]["size"]["database_bytes"] - empty
    scale = FLEET / args.districts
    return {
        "runs_simulated_per_instance": runs,
        "empty_instance_bytes": empty,
        "bytes_per_run_without": round(without / runs),
        "fleet_districts": FLEET,
        "fleet_runs_year_without": FLEET * args.days,
        "fleet_year_without_gb": round((empty + without * scale) / 1e9, 2),
        "fleet_year_with_gb": round((empty + with_ * scale) / 1e9, 2),
        "fleet_event_log_rows_without": result["without"]["size"]["tables"]["event_logs"]["rows"]
        * scale,
        "fleet_event_log_rows_with": result["with"]["size"]["tables"]["event_logs"]["rows"] * scale,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.retention", description=__doc__.splitlines()[0]
    )
    p.add_argument("--districts", type=int, default=20)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--retention-days", type=int, default=90)
    p.add_argument("--held-every", type=int, default=500, help="1 upload in N is held")
    p.add_argument("--database-url", default=DEFAULT_URL)
    p.add_argument("--keep", action="store_true", help="keep the databases")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base = conninfo_to_dict(args.database_url)["dbname"]
    names = {"eams": base, "without": f"{base}_without", "with": f"{base}_with"}
    urls = {k: recreate(args.database_url, v) for k, v in names.items()}
    for name in names.values():
        synchronous_commit(args.database_url, name, on=False)
    home = Path(tempfile.mkdtemp(prefix="eams_retention_"))
    result: dict[str, Any] = {"args": vars(args)}
    try:
        t0 = time.monotonic()
        held = load_uploads(urls["eams"], args.districts, args.days, args.held_every)
        result["held_uploads"] = len(held)
        for name, with_retention in (("without", False), ("with", True)):
            print(
                f"{name} retention: {args.districts} districts x {args.days} days", file=sys.stderr
            )
            result[name] = simulate(args, urls[name], urls["eams"], home / name, with_retention)
        synchronous_commit(args.database_url, names["without"], on=True)
        result["catch_up"] = catch_up(urls["without"], urls["eams"], home / "without", args)
        result["extrapolated"] = extrapolate(result, args)
        result["seconds"] = round(time.monotonic() - t0, 1)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if not args.keep:
            for name in names.values():
                drop(args.database_url, name)
    for name in ("without", "with"):
        s = result[name]["size"]
        events = s["tables"]["event_logs"]
        print(
            f"{name:>7} retention: database {s['database_bytes'] / 1e6:,.1f} MB, "
            f"event_logs {events['rows']:,} rows {events['bytes'] / 1e6:,.1f} MB, "
            f"runs {s['tables']['runs']['rows']:,}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
