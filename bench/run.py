"""The timing harness: synthetic districts on the local PostgreSQL, the real engine timed.

The parent process prepares (and caches) one template database and one file per shape,
then runs every measurement in its own subprocess so that each peak RSS is its own:

    engine     `eams_pipeline.services.process.process_upload` (the code path of `eams process` and
               the Dagster job) on a database re-created from the template, then the error
               file rendered as `eams process` does;
    reference  `eams_reference.reference_process` on a sample of the file;
    hashing    real argon2id (OWASP parameters) on 1 and on 2 worker threads.

The main figures run the engine with the cheapest argon2id parameters (time_cost=1,
memory 8 KiB): "without password hashing"; the hashing step is measured on its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/eams_bench"
CACHE = Path(tempfile.gettempdir()) / "eams_bench"
SCENARIOS = ("nightly-1m", "replay", "nightly-100k")
GOALS = {  # seconds, median end to end
    "nightly-1m": 10.0,
    "replay": 5.0,
    "nightly-100k": 1.5,
}
RSS_GOAL_MIB = 2048
SPEEDUP_GOAL = 15.0
HASH_SCALING_GOAL = 1.8


# ---------------------------------------------------------------------------------------
# Preparation: a template database and a file per shape, cached by content
# ---------------------------------------------------------------------------------------


def _admin_url(url: str) -> str:
    return make_conninfo(url, dbname="postgres")


def _dbname(url: str) -> str:
    return conninfo_to_dict(url).get("dbname") or "eams_bench"


def _cache_key(shape_name: str) -> str:
    from bench import generate
    from eams_pipeline.db import migrations

    h = hashlib.sha256(Path(generate.__file__).read_bytes())
    h.update(shape_name.encode())
    for m in migrations.available():
        h.update(m.checksum.encode())
    return h.hexdigest()[:16]


def _template_name(url: str, shape_name: str) -> str:
    return f"{_dbname(url)}_tpl_{shape_name.replace('-', '_')}"


def prepare(url: str, shape_name: str, log: Any) -> tuple[str, Path, Path]:
    """(template database, file path, passwords path) for a shape, built when missing."""
    from bench import generate

    key = _cache_key(shape_name)
    template = _template_name(url, shape_name)
    CACHE.mkdir(parents=True, exist_ok=True)
    file_path = CACHE / f"{shape_name}-{key}.csv"
    passwords_path = CACHE / f"{shape_name}-{key}.passwords.parquet"
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        found = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (template,),
        ).fetchone()
    if found and found[0] == key and file_path.exists() and passwords_path.exists():
        return template, file_path, passwords_path

    log(f"generating {shape_name} (cache key {key}) ...")
    t = time.perf_counter()
    district = generate.build_district(generate.SHAPES[shape_name])
    log(f"  generated {district.shape.rows:,} rows in {time.perf_counter() - t:.1f} s")
    file_path.write_bytes(district.file)
    district.students[["student_id", "password"]].to_parquet(passwords_path)

    t = time.perf_counter()
    _recreate(url, template, None)
    from eams_pipeline.db import migrations

    with psycopg.connect(make_conninfo(url, dbname=template)) as conn:
        migrations.upgrade(conn)
        generate.load_district(conn, district)
    with psycopg.connect(make_conninfo(url, dbname=template), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE, FREEZE)")
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(template), sql.Literal(key)
            )
        )
    log(f"  loaded {len(district.students):,} students in {time.perf_counter() - t:.1f} s")
    return template, file_path, passwords_path


def _recreate(url: str, name: str, template: str | None) -> float:
    t = time.perf_counter()
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if template is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------
# Workers (each in its own process)
# ---------------------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries the
    forking parent's peak into ru_maxrss across exec, which would count the generator."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_engine(url: str, file_path: str, upload_key: str, out_dir: str) -> dict[str, Any]:
    from bench.generate import DISTRICT, SECRET
    from eams_pipeline.core.error_file import render_error_file
    from eams_pipeline.core.passwords import Argon2Settings, PasswordHasher
    from eams_pipeline.services.process import Engine, Upload, process_upload

    workers = os.cpu_count() or 1
    cheap = Argon2Settings(time_cost=1, memory_kib=8, parallelism=1, workers=workers)
    hasher = PasswordHasher(cheap)
    data = Path(file_path).read_bytes()
    error_path = Path(out_dir) / f"students_errors_{upload_key}.csv"
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        result = process_upload(
            conn,
            Upload(district=DISTRICT, data=data, key=upload_key),
            Engine(secret=SECRET, hasher=hasher),
            error_file_name=lambda _id: str(error_path),
        )
        t1 = time.perf_counter()
        if result.counts["errors"] or result.file_error:
            error_path.write_bytes(render_error_file(result.errors))
        t2 = time.perf_counter()
    steps = dict(result.timings)
    steps["commit"] = max(0.0, (t1 - t0) - sum(result.timings.values()))
    steps["error_file"] = t2 - t1
    return {
        "rows": result.counts["rows"],
        "status": str(result.status),
        "counts": result.counts,
        "error_codes": result.error_codes,
        "steps": {k: round(v, 4) for k, v in steps.items()},
        "engine_s": round(t1 - t0, 4),
        "end_to_end_s": round(t2 - t0, 4),
        "hashed_passwords": result.hashed_passwords,
        "hash_workers": hasher.workers,
        "hash_settings": "argon2id t=1 m=8KiB p=1 (minimal: 'without password hashing')",
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }


def worker_reference(url: str, file_path: str, passwords_path: str, sample: int) -> dict[str, Any]:
    import pandas as pd

    from bench.generate import DISTRICT
    from eams_reference import district_state_from_db, reference_process

    data = Path(file_path).read_bytes()
    total = data.count(b"\n")  # every record is one line in the benchmark's files
    if 0 < sample < total:
        cut = -1
        for _ in range(sample + 1):  # header + `sample` records
            cut = data.index(b"\n", cut + 1)
        data = data[: cut + 1]
        rows = sample
    else:
        rows = total
    pw = pd.read_parquet(passwords_path)
    passwords = dict(zip(pw["student_id"], pw["password"], strict=True))
    t = time.perf_counter()
    with psycopg.connect(url) as conn:
        state = district_state_from_db(conn, DISTRICT, passwords)
    state_s = time.perf_counter() - t
    t = time.perf_counter()
    result = reference_process(data, state)
    elapsed = time.perf_counter() - t
    return {
        "rows": rows,
        "whole_file": rows == total,
        "seconds": round(elapsed, 4),
        "state_load_s": round(state_s, 2),
        "us_per_row": round(elapsed / rows * 1e6, 2),
        "counts": result.counts,
    }


def worker_hashing(sample: int) -> dict[str, Any]:
    from eams_pipeline.core.passwords import Argon2Settings, PasswordHasher

    passwords = [f"bench-password-{i:06d}" for i in range(sample)]
    out: dict[str, Any] = {"hashes": sample, "params": "argon2id m=19456 KiB, t=2, p=1"}
    for workers in (1, 2):
        hasher = PasswordHasher(Argon2Settings(workers=workers))
        hasher.hash_many(passwords[:4])  # warm up
        t = time.perf_counter()
        hasher.hash_many(passwords)
        elapsed = time.perf_counter() - t
        out[f"workers_{workers}"] = {
            "seconds": round(elapsed, 3),
            "hashes_per_s": round(sample / elapsed, 1),
        }
    out["scaling_2_over_1"] = round(
        out["workers_2"]["hashes_per_s"] / out["workers_1"]["hashes_per_s"], 2
    )
    return out


def _spawn(*args: str) -> dict[str, Any]:
    """Run `python -m bench.run <worker> ...` and return the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# Sanity: the database after a run
# ---------------------------------------------------------------------------------------


def db_counts(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        students = {
            f"{code}:{status}": n
            for code, status, n in conn.execute(
                """SELECT d.code, s.status, count(*) FROM students s JOIN districts d
                   USING (district_id) GROUP BY 1, 2 ORDER BY 1, 2"""
            )
        }
        orders = [
            {"order": number, "size": size, "used": used, "active_on_order": active}
            for number, size, used, active in conn.execute(
                """SELECT o.number, o.size, o.used,
                          count(s.student_pk) FILTER (WHERE s.status = 'active')
                   FROM orders o LEFT JOIN students s ON s.order_id = o.order_id
                   GROUP BY o.order_id ORDER BY o.number"""
            )
        ]
        history = conn.execute("SELECT count(*) FROM student_history").fetchone()[0]
        errors = conn.execute("SELECT count(*) FROM upload_errors").fetchone()[0]
    consistent = all(o["used"] == o["active_on_order"] <= o["size"] for o in orders)
    return {
        "students": students,
        "orders": orders,
        "history_rows": history,
        "upload_error_rows": errors,
        "licenses_consistent": consistent,
    }


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as fh:
        mem_kib = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kib / 1024**2, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    steps = runs[0]["steps"].keys()
    return {
        "rows": runs[0]["rows"],
        "runs_end_to_end_s": [r["end_to_end_s"] for r in runs],
        "median_end_to_end_s": _median([r["end_to_end_s"] for r in runs]),
        # the goals' figure: "without password hashing" (the hash step runs with minimal
        # argon2id parameters and is taken out; real hashing is measured on its own)
        "median_without_hashing_s": _median(
            [r["end_to_end_s"] - r["steps"].get("hash", 0.0) for r in runs]
        ),
        "median_steps_s": {s: _median([r["steps"].get(s, 0.0) for r in runs]) for s in steps},
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "hashed_passwords": runs[0]["hashed_passwords"],
        "hash_workers": runs[0]["hash_workers"],
        "counts": runs[0]["counts"],
        "error_codes": runs[0]["error_codes"],
        "load_avg_before": [r["load_avg_before"] for r in runs],
    }


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    url = args.database_url
    wanted = SCENARIOS if args.scenario == "all" else (args.scenario,)
    out_dir = tempfile.mkdtemp(prefix="eams_bench_errors_")
    with psycopg.connect(_admin_url(url)) as admin:
        server = admin.execute("SHOW server_version").fetchone()[0]
        settings = dict(
            admin.execute(
                """SELECT name, setting || coalesce(unit, '') FROM pg_settings
                   WHERE name IN ('shared_buffers', 'work_mem', 'maintenance_work_mem',
                                  'max_wal_size', 'synchronous_commit', 'wal_level',
                                  'checkpoint_timeout')"""
            ).fetchall()
        )
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "postgresql": {"version": server, "settings": settings},
        "scenarios": {},
    }

    def engine_run(label: str, template: str | None, file_path: Path, i: int) -> dict[str, Any]:
        setup_s = _recreate(url, _dbname(url), template) if template else 0.0
        load = os.getloadavg()[0]
        key = f"BENCH-{label}-{i}-{time.time_ns()}"
        res = _spawn("engine", url, str(file_path), key, out_dir)
        res["load_avg_before"] = round(load, 2)
        res["db_create_s"] = round(setup_s, 2)
        c = res["steps"]
        log(
            f"  {label} run {i + 1}: {res['end_to_end_s']:.2f} s end to end "
            f"(read {c.get('read', 0):.2f}, validate {c.get('validate', 0):.2f}, "
            f"snapshot {c.get('snapshot', 0):.2f}, plan {c.get('plan', 0):.2f}, "
            f"hash {c.get('hash', 0):.2f}, apply {c.get('apply', 0):.2f}, "
            f"record {c.get('record', 0):.2f}, commit {c.get('commit', 0):.2f}), "
            f"RSS {res['peak_rss_mib']:.0f} MiB, load {load:.2f}"
        )
        return res

    for shape_name in ("nightly-1m", "nightly-100k"):
        labels = [s for s in wanted if (s == "nightly-100k") == (shape_name == "nightly-100k")]
        if not labels:
            continue
        template, file_path, passwords_path = prepare(url, shape_name, log)
        nightly: list[dict[str, Any]] = []
        replay: list[dict[str, Any]] = []
        sanity: dict[str, Any] = {}
        for i in range(args.runs):
            nightly.append(engine_run(shape_name, template, file_path, i))
            if "replay" in labels:
                replay.append(engine_run("replay", None, file_path, i))
            sanity = db_counts(url)
        if shape_name in labels:
            report["scenarios"][shape_name] = _summarise(nightly)
            report["scenarios"][shape_name]["db_after"] = sanity
        if "replay" in labels:
            report["scenarios"]["replay"] = _summarise(replay)
            report["scenarios"]["replay"]["db_after"] = sanity
        if args.reference_sample >= 0:
            log(f"  reference on {shape_name} (sample {args.reference_sample or 'all'}) ...")
            _recreate(url, _dbname(url), template)
            ref = _spawn(
                "reference", url, str(file_path), str(passwords_path), str(args.reference_sample)
            )
            engine_per_row = statistics.median(
                (r["end_to_end_s"] - r["steps"].get("hash", 0.0)) / r["rows"] for r in nightly
            )
            ref["engine_us_per_row"] = round(engine_per_row * 1e6, 2)
            ref["speedup_per_row"] = round(ref["us_per_row"] / (engine_per_row * 1e6), 1)
            # for context: the engine's in-memory steps only (the reference has no database)
            in_memory = statistics.median(
                sum(r["steps"].get(k, 0.0) for k in ("read", "validate", "plan")) / r["rows"]
                for r in nightly
            )
            ref["engine_in_memory_us_per_row"] = round(in_memory * 1e6, 2)
            ref["speedup_in_memory"] = round(ref["us_per_row"] / (in_memory * 1e6), 1)
            report["scenarios"][shape_name if shape_name in labels else "replay"]["reference"] = ref
            log(f"  reference: {ref['us_per_row']} us/row, engine x{ref['speedup_per_row']} faster")

    if args.hash_sample > 0:
        log(f"hashing {args.hash_sample} passwords with real argon2id on 1 and 2 workers ...")
        report["hashing"] = _spawn("hashing", str(args.hash_sample))
    report["goals"] = goals(report)
    return report


def goals(report: dict[str, Any]) -> dict[str, Any]:
    s = report["scenarios"]
    out: dict[str, Any] = {}
    for name, limit in GOALS.items():
        if name in s:
            out[f"{name}_median_le_{limit:g}s"] = s[name]["median_without_hashing_s"] <= limit
    if "nightly-1m" in s:
        out["nightly-1m_rss_le_2GiB"] = s["nightly-1m"]["peak_rss_mib"] <= RSS_GOAL_MIB
        ref = s["nightly-1m"].get("reference")
        if ref:
            out["nightly-1m_speedup_ge_15x"] = ref["speedup_per_row"] >= SPEEDUP_GOAL
    for name in s:
        out[f"{name}_licenses_consistent"] = s[name]["db_after"]["licenses_consistent"]
    if "replay" in s:
        out["replay_hashes_nothing"] = s["replay"]["hashed_passwords"] == 0
    if "hashing" in report:
        out["hash_scaling_ge_1.8x"] = report["hashing"]["scaling_2_over_1"] >= HASH_SCALING_GOAL
    return out


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM; "
        f"PostgreSQL {report['postgresql']['version']}; {report['date']}"
    )
    steps = (
        "read",
        "validate",
        "snapshot",
        "plan",
        "hash",
        "apply",
        "record",
        "commit",
        "error_file",
    )
    head = f"{'scenario':<13}{'rows':>10}{'no-hash s':>10}{'e2e s':>8}"
    head += "".join(f"{s:>11}" for s in steps)
    print(head + f"{'RSS MiB':>9}{'hashed':>8}  runs (s)")
    for name, s in report["scenarios"].items():
        cells = "".join(f"{s['median_steps_s'].get(k, 0.0):>11.3f}" for k in steps)
        runs = ", ".join(f"{v:.2f}" for v in s["runs_end_to_end_s"])
        print(
            f"{name:<13}{s['rows']:>10,}{s['median_without_hashing_s']:>10.3f}"
            f"{s['median_end_to_end_s']:>8.2f}{cells}"
            f"{s['peak_rss_mib']:>9.0f}{s['hashed_passwords']:>8}  {runs}"
        )
    for name, s in report["scenarios"].items():
        c = s["counts"]
        print(
            f"{name}: added {c['added']:,} activated {c['activated']:,} deactivated "
            f"{c['deactivated']:,} updated {c['updated']:,} unchanged {c['unchanged']:,} "
            f"errors {c['errors']:,}; licenses consistent: {s['db_after']['licenses_consistent']}"
        )
        ref = s.get("reference")
        if ref:
            scope = "whole file" if ref["whole_file"] else f"sample of {ref['rows']:,} rows"
            print(
                f"  reference ({scope}): {ref['seconds']:.2f} s = {ref['us_per_row']} us/row; "
                f"engine {ref['engine_us_per_row']} us/row end to end without hashing: "
                f"x{ref['speedup_per_row']} per row; engine's in-memory steps (read, validate, "
                f"plan) {ref['engine_in_memory_us_per_row']} us/row: x{ref['speedup_in_memory']}"
            )
    h = report.get("hashing")
    if h:
        print(
            f"hashing ({h['params']}, {h['hashes']} passwords): 1 worker "
            f"{h['workers_1']['hashes_per_s']}/s, 2 workers {h['workers_2']['hashes_per_s']}/s, "
            f"x{h['scaling_2_over_1']}"
        )
    verdicts = (f"{k}={'met' if v else 'NOT met'}" for k, v in report["goals"].items())
    print("goals: " + ", ".join(verdicts))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--reference-sample",
        type=int,
        default=50_000,
        help="rows of the file the row-by-row reference runs on (0: all; -1: skip it)",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("EAMS_BENCH_DATABASE_URL", DEFAULT_URL),
        help="the benchmark database (dropped and re-created for every run)",
    )
    p.add_argument(
        "--hash-sample",
        type=int,
        default=200,
        help="passwords hashed with real argon2id for the hashing figure (0: skip)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = benchmark(args)
    print_table(report)
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":  # worker entry points: python -m bench.run <worker> args...
    kind, rest = sys.argv[1], sys.argv[2:]
    if kind == "engine":
        result = worker_engine(*rest)
    elif kind == "reference":
        result = worker_reference(rest[0], rest[1], rest[2], int(rest[3]))
    elif kind == "hashing":
        result = worker_hashing(int(rest[0]))
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps(result))
