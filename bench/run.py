"""The timing harness: synthetic districts on the local PostgreSQL, the real engine timed.

The parent process prepares (and caches) one template database and one file per shape,
then runs every measurement in its own subprocess so that each peak RSS is its own:

    engine     `eams_pipeline.services.process.process_upload` (the code path of `eams process` and
               the Dagster job) on a database re-created from the template, then the error
               file rendered as `eams process` does, then the change report built from the
               history and written (services.change_report, as the change_report asset and
               `eams process --changes-out` do; timed apart, not in the upload's figure);
    reference  `eams_reference.reference_process` on a sample of the file;
    hashing    real argon2id (OWASP parameters) on 1 and on 2 worker threads.

The main figures run the engine with the cheapest argon2id parameters (time_cost=1,
memory 8 KiB): "without password hashing"; the hashing step is measured on its own.
"""

from __future__ import annotations

import argparse
import csv
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/eams_bench"
CACHE = Path(tempfile.gettempdir()) / "eams_bench"


@dataclass(frozen=True)
class Scenario:
    shape: str  # generate.SHAPES key: the file and the stored students it is planned against
    database: str  # "fresh": COPY + VACUUM FREEZE; "aged": built by the engine; "empty"
    follows: str | None = None  # runs on the database the named scenario just left


SCENARIOS = {
    # best case: the stored students COPYed in key order into a frozen template
    "nightly-1m": Scenario("nightly-1m", "fresh"),
    "replay": Scenario("nightly-1m", "fresh", follows="nightly-1m"),
    "nightly-100k": Scenario("nightly-100k", "fresh"),
    # a database that has lived: onboarded and then changed nightly by the engine itself
    "nightly-1m-aged": Scenario("nightly-1m", "aged"),
    "replay-aged": Scenario("nightly-1m", "aged", follows="nightly-1m-aged"),
    "nightly-100k-aged": Scenario("nightly-100k", "aged"),
    # a large district's first night (or a new school year)
    "onboarding-1m": Scenario("onboarding-1m", "empty"),
    "onboarding-100k": Scenario("onboarding-100k", "empty"),
}
DEFAULT_SCENARIOS = (
    "nightly-1m",
    "replay",
    "nightly-100k",
    "nightly-1m-aged",
    "replay-aged",
    "nightly-100k-aged",
    "onboarding-1m",
)
# the goals on an aged database: without hashing, median of the per-run ratios to a raw COPY
# of the same file
RATIO_GOALS = {
    "nightly-1m-aged": 4.0,
    "replay-aged": 2.0,
    "nightly-100k-aged": 4.0,
    "onboarding-1m": 8.0,
}
RSS_GOAL_MIB = 1536  # for 1M rows
AGING_NIGHTS = 3
# the earlier goals (seconds, median without hashing), kept for comparison
GOALS = {
    "nightly-1m": 10.0,
    "replay": 5.0,
    "nightly-100k": 1.5,
}
SPEEDUP_GOAL = 15.0
HASH_SCALING_GOAL = 1.8


# ---------------------------------------------------------------------------------------
# Preparation: a template database and a file per shape, cached by content
# ---------------------------------------------------------------------------------------


def _admin_url(url: str) -> str:
    return make_conninfo(url, dbname="postgres")


def _dbname(url: str) -> str:
    return conninfo_to_dict(url).get("dbname") or "eams_bench"


def _data_key(shape_name: str, variant: Any) -> str:
    from bench import generate

    h = hashlib.sha256(Path(generate.__file__).read_bytes())
    h.update(f"{shape_name}|{variant}".encode())
    return h.hexdigest()[:16]


def _cache_key(shape_name: str, variant: Any, database: str) -> str:
    from eams_pipeline.db import migrations

    h = hashlib.sha256(_data_key(shape_name, variant).encode())
    h.update(f"{database}|{AGING_NIGHTS if database == 'aged' else 0}".encode())
    for m in migrations.available():
        h.update(m.checksum.encode())
    return h.hexdigest()[:16]


def _template_name(url: str, shape_name: str, variant: Any, database: str) -> str:
    kind = "" if database == "fresh" else f"{database}_"
    tag = f"_{variant.tag()}" if variant.tag() else ""
    return f"{_dbname(url)}_tpl_{kind}{shape_name.replace('-', '_')}{tag}"


@dataclass(frozen=True)
class Prepared:
    template: str
    file: Path  # the night's students.csv
    passwords: Path  # the stored students' clear passwords (for the reference)
    copyable: Path  # the same file without its wrong-field-count records (the COPY floor)


def _copyable(data: bytes) -> bytes:
    """The file without the records whose field count is wrong (a few hundred per million,
    which a COPY would refuse): what the raw COPY baseline lands. The benchmark's records
    are one line each."""
    lines = data.split(b"\n")
    keep = [
        line
        for line, fields in zip(lines, csv.reader(x.decode("utf-8") for x in lines), strict=True)
        if len(fields) == 11 or not line
    ]
    return b"\n".join(keep)


def prepare(url: str, shape_name: str, variant: Any, database: str, log: Any) -> Prepared:
    """The template database and the files for a scenario, built when missing."""
    from bench import generate

    key = _cache_key(shape_name, variant, database)
    data_key = _data_key(shape_name, variant)
    template = _template_name(url, shape_name, variant, database)
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = f"{shape_name}{'-' + variant.tag() if variant.tag() else ''}-{data_key}"
    files = Prepared(
        template,
        CACHE / f"{stem}.csv",
        CACHE / f"{stem}.passwords.parquet",
        CACHE / f"{stem}.copyable.csv",
    )
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        found = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (template,),
        ).fetchone()
    have_files = all(p.exists() for p in (files.file, files.passwords, files.copyable))
    if found and found[0] == key and have_files:
        return files

    log(f"generating {shape_name} {variant} (cache key {key}) ...")
    t = time.perf_counter()
    district = generate.build_district(generate.SHAPES[shape_name], variant)
    log(f"  generated {district.shape.rows:,} rows in {time.perf_counter() - t:.1f} s")
    files.file.write_bytes(district.file)
    files.copyable.write_bytes(_copyable(district.file))
    district.students[["student_id", "password"]].to_parquet(files.passwords)

    t = time.perf_counter()
    _recreate(url, template, None)
    from eams_pipeline.db import migrations

    template_url = make_conninfo(url, dbname=template)
    with psycopg.connect(template_url) as conn:
        migrations.upgrade(conn)
        generate.load_district(conn, district, bench_students=database == "fresh")
    if database == "fresh":
        with psycopg.connect(template_url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE, FREEZE)")
    elif database == "aged":
        _age(template_url, district, log)
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(template), sql.Literal(key)
            )
        )
    log(f"  built {template} in {time.perf_counter() - t:.1f} s")
    return files


def _age(template_url: str, district: Any, log: Any) -> None:
    """Build the district with the engine's own uploads (cheap hashing): its onboarding
    file, AGING_NIGHTS nightly files of changes and one that restores the stored state.
    No VACUUM: the dead tuples, the history and the index bloat stay as the engine left
    them; a plain ANALYZE gives the statistics autovacuum would have gathered."""
    from bench import generate

    out_dir = tempfile.mkdtemp(prefix="eams_bench_aging_")
    nights = [generate.onboarding_file(district), *generate.aging_files(district, AGING_NIGHTS)]
    for i, data in enumerate(nights):
        path = Path(out_dir) / f"night-{i}.csv"
        path.write_bytes(data)
        res = _spawn("engine", template_url, str(path), f"BENCH-aging-{i}", out_dir)
        path.unlink()
        c = res["counts"]
        log(
            f"  aging upload {i} ({'onboarding' if i == 0 else 'nightly'}): {res['status']}, "
            f"{res['end_to_end_s']:.1f} s, added {c['added']:,} activated {c['activated']:,} "
            f"deactivated {c['deactivated']:,} updated {c['updated']:,} errors {c['errors']:,}"
        )
        if res["status"] not in ("processed", "partially_processed"):
            raise RuntimeError(f"aging upload {i} was not applied: {res['status']}")
    with psycopg.connect(template_url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        dead = conn.execute(
            "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'students'"
        ).fetchone()
        history = conn.execute("SELECT count(*) FROM student_history").fetchone()[0]
    log(f"  aged: students live/dead tuples {dead}, {history:,} history rows")


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


def raw_copy(url: str, path: Path) -> float:
    """The floor: seconds to COPY the file (CSV, header) into an unlogged table of 11 text
    columns on the benchmark database, sent in 1 MiB chunks; the table is dropped after."""
    data = memoryview(path.read_bytes())
    columns = ", ".join(f"c{i} text" for i in range(1, 12))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_raw_copy")
        conn.execute(f"CREATE UNLOGGED TABLE bench_raw_copy ({columns})")
        t = time.perf_counter()
        with conn.cursor().copy("COPY bench_raw_copy FROM STDIN (FORMAT csv, HEADER true)") as cp:
            for at in range(0, len(data), 1 << 20):
                cp.write(data[at : at + (1 << 20)])
        elapsed = time.perf_counter() - t
        conn.execute("DROP TABLE bench_raw_copy")
    return elapsed


def command_run(url: str, file_path: Path, out_dir: str) -> dict[str, Any]:
    """`eams process` as a user runs it (interpreter start and imports included), cheap
    argon2id ("hashing excluded" settings; its hashing is not subtracted here)."""
    from bench.generate import DISTRICT, SECRET

    env = dict(
        os.environ,
        EAMS_DATABASE_URL=url,
        EAMS_SECRET_KEY=SECRET.decode(),
        EAMS_ARGON2_TIME_COST="1",
        EAMS_ARGON2_MEMORY_KIB="8",
    )
    eams = Path(sys.executable).with_name("eams")
    rss_file = Path(out_dir) / "command.rss"
    t = time.perf_counter()
    proc = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            "-o",
            str(rss_file),
            str(eams),
            "process",
            "--district",
            DISTRICT,
            str(file_path),
            "--errors-out",
            str(Path(out_dir) / "command_errors.csv"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - t
    if proc.returncode not in (0, 2, 3):
        raise RuntimeError(f"eams process failed ({proc.returncode}):\n{proc.stderr}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "command_s": round(elapsed, 4),
        "exit_code": proc.returncode,
        "status": summary["status"],
        "rows": summary["rows"],
        "peak_rss_mib": round(int(rss_file.read_text().split()[-1]) / 1024, 1),
    }


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


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _rss_steps():  # a Progress (imported late)
    """A Progress that samples this process's RSS every 2 ms on a thread and keeps, for
    each step, the highest RSS seen while it ran (`peak`) and the RSS when it ended (`end`);
    the time between two steps is counted as `after_<step>`. Where a run's peak comes from."""
    import threading

    from eams_pipeline.services.progress import Progress

    class RssSteps(Progress):
        def __init__(self) -> None:
            self.current = "start"
            self.peak: dict[str, int] = {}
            self.end: dict[str, int] = {}
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

        def _sample(self) -> None:
            while not self._stop.wait(0.002):
                step, rss = self.current, _rss_bytes()
                if rss > self.peak.get(step, 0):
                    self.peak[step] = rss

        def started(self, step: str) -> None:
            self.current = step

        def finished(self, step: str, seconds: float) -> None:
            rss = _rss_bytes()
            self.peak[step] = max(self.peak.get(step, 0), rss)
            self.end[step] = rss
            self.current = f"after_{step}"

        def stop(self) -> dict[str, dict[str, float]]:
            self._stop.set()
            self._thread.join()
            mib = 1024 * 1024
            return {
                step: {"peak_mib": round(peak / mib, 1)}
                | ({"end_mib": round(self.end[step] / mib, 1)} if step in self.end else {})
                for step, peak in self.peak.items()
            }

    return RssSteps()


def worker_engine(url: str, file_path: str, upload_key: str, out_dir: str) -> dict[str, Any]:
    from bench.generate import DISTRICT, SECRET
    from eams_pipeline.core.error_file import render_error_file
    from eams_pipeline.core.outcome import APPLIED_STATUSES
    from eams_pipeline.core.passwords import Argon2Settings, PasswordHasher
    from eams_pipeline.services.change_report import build_change_report
    from eams_pipeline.services.process import Engine, Upload, process_upload

    workers = os.cpu_count() or 1
    cheap = Argon2Settings(time_cost=1, memory_kib=8, parallelism=1, workers=workers)
    hasher = PasswordHasher(cheap)
    rss = _rss_steps()
    rss.started("read_file")
    data = Path(file_path).read_bytes()
    rss.finished("read_file", 0.0)
    error_path = Path(out_dir) / f"students_errors_{upload_key}.csv"
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        result = process_upload(
            conn,
            Upload(district=DISTRICT, data=data, key=upload_key),
            Engine(secret=SECRET, hasher=hasher),
            error_file_name=lambda _id: str(error_path),
            progress=rss,
        )
        t1 = time.perf_counter()
        rss.started("error_file")
        if result.counts["errors"] or result.file_error:
            error_path.write_bytes(render_error_file(result.errors))
        t2 = time.perf_counter()
        rss.finished("error_file", t2 - t1)
        change_lines, change_bytes, change_query_s = 0, 0, 0.0
        rss.started("change_report")
        if result.status in APPLIED_STATUSES:
            report = build_change_report(conn, upload_key)
            (Path(out_dir) / report.name).write_bytes(report.content)
            change_lines, change_bytes = report.lines, len(report.content)
            change_query_s = report.seconds
        t3 = time.perf_counter()
        rss.finished("change_report", t3 - t2)
    rss_steps = rss.stop()
    steps = dict(result.timings)
    # the apply's seconds that are not this process's CPU: PostgreSQL's time for the writes
    steps["apply_db"] = result.timings.get("apply", 0.0) - result.cpu_timings.get("apply", 0.0)
    steps["commit"] = max(0.0, (t1 - t0) - sum(result.timings.values()))
    steps["error_file"] = t2 - t1
    return {
        # the change report alone (query, rendering, write), after the upload
        "change_report_s": round(t3 - t2, 4),
        "change_report_build_s": round(change_query_s, 4),
        "change_report_lines": change_lines,
        "change_report_bytes": change_bytes,
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
        "rss_steps": rss_steps,
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


def _summarise(runs: list[dict[str, Any]], commands: list[dict[str, Any]]) -> dict[str, Any]:
    steps = runs[0]["steps"].keys()
    out = {
        "rows": runs[0]["rows"],
        "runs_end_to_end_s": [r["end_to_end_s"] for r in runs],
        "median_end_to_end_s": _median([r["end_to_end_s"] for r in runs]),
        # the goals' figure: "without password hashing" (the hash step runs with minimal
        # argon2id parameters and is taken out; real hashing is measured on its own)
        "runs_without_hashing_s": [r["without_hashing_s"] for r in runs],
        "median_without_hashing_s": _median([r["without_hashing_s"] for r in runs]),
        "runs_raw_copy_s": [r["raw_copy_s"] for r in runs],
        "median_raw_copy_s": _median([r["raw_copy_s"] for r in runs]),
        "runs_ratio": [r["ratio"] for r in runs],
        "median_ratio": _median([r["ratio"] for r in runs]),
        # PostgreSQL's share of the apply alone, to the same raw COPY: a floor for the ratio
        "median_apply_db_ratio": _median(
            [r["steps"].get("apply_db", 0.0) / r["raw_copy_s"] for r in runs]
        ),
        "median_steps_s": {s: _median([r["steps"].get(s, 0.0) for r in runs]) for s in steps},
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        # where the highest run's peak came from: each step's peak and its RSS at the end
        "rss_steps": max(runs, key=lambda r: r["peak_rss_mib"]).get("rss_steps", {}),
        "hashed_passwords": runs[0]["hashed_passwords"],
        "hash_workers": runs[0]["hash_workers"],
        "counts": runs[0]["counts"],
        "error_codes": runs[0]["error_codes"],
        "load_avg_before": [r["load_avg_before"] for r in runs],
        # the change report alone, after the upload (not in the figures above)
        "change_report": {
            "lines": runs[0]["change_report_lines"],
            "bytes": runs[0]["change_report_bytes"],
            "runs_s": [r["change_report_s"] for r in runs],
            "median_s": _median([r["change_report_s"] for r in runs]),
            "median_to_upload": _median([r["change_report_to_upload"] for r in runs]),
            "median_to_copy": _median([r["change_report_to_copy"] for r in runs]),
        },
    }
    if commands:
        out["command"] = {
            "runs_s": [c["command_s"] for c in commands],
            "median_s": _median([c["command_s"] for c in commands]),
            "runs_raw_copy_s": [c["raw_copy_s"] for c in commands],
            "median_ratio": _median([c["ratio"] for c in commands]),
            "peak_rss_mib": max(c["peak_rss_mib"] for c in commands),
            "status": commands[0]["status"],
            "load_avg_before": [c["load_avg_before"] for c in commands],
        }
    return out


def _families(wanted: list[str]) -> list[list[str]]:
    """The scenarios grouped by the database they run on: a leader, then its followers
    (a replay runs right after its nightly, on the same database)."""
    chains: list[list[str]] = []
    for name in wanted:
        sc = SCENARIOS[name]
        if sc.follows is None:
            if not any(name in c for c in chains):
                chains.append([name])
        else:
            chain = next((c for c in chains if c[0] == sc.follows), None)
            if chain is None:
                chain = [sc.follows]
                chains.append(chain)
            chain.append(name)
    return chains


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from bench import generate

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    url = args.database_url
    wanted = list(DEFAULT_SCENARIOS) if args.scenario == "all" else args.scenario.split(",")
    for name in wanted:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    variant = generate.Variant(
        seed=args.seed, quoting=args.quoting, schools=args.schools, names=args.names
    )
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
        "variant": {"tag": variant.tag() or "default", **variant.__dict__},
        "scenarios": {},
    }

    def one_run(label: str, files: Prepared, mode: str, i: int) -> dict[str, Any]:
        load = os.getloadavg()[0]
        copy_s = raw_copy(url, files.copyable)
        if mode == "command":
            res = command_run(url, files.file, out_dir)
            res["raw_copy_s"] = round(copy_s, 4)
            res["ratio"] = round(res["command_s"] / copy_s, 2)
            res["load_avg_before"] = round(load, 2)
            log(
                f"  {label} command run {i + 1}: eams process {res['command_s']:.2f} s "
                f"(cheap hashing included), raw COPY {copy_s:.2f} s, x{res['ratio']}, "
                f"RSS {res['peak_rss_mib']:.0f} MiB, load {load:.2f}"
            )
            return res
        key = f"BENCH-{label}-{i}-{time.time_ns()}"
        res = _spawn("engine", url, str(files.file), key, out_dir)
        res["load_avg_before"] = round(load, 2)
        res["raw_copy_s"] = round(copy_s, 4)
        res["without_hashing_s"] = round(res["end_to_end_s"] - res["steps"].get("hash", 0.0), 4)
        res["ratio"] = round(res["without_hashing_s"] / copy_s, 2)
        res["change_report_to_upload"] = round(res["change_report_s"] / res["without_hashing_s"], 3)
        res["change_report_to_copy"] = round(res["change_report_s"] / copy_s, 2)
        c = res["steps"]
        log(
            f"  {label} run {i + 1}: {res['without_hashing_s']:.2f} s without hashing, raw COPY "
            f"{copy_s:.2f} s, x{res['ratio']} ("
            + ", ".join(f"{k} {v:.2f}" for k, v in c.items() if v >= 0.005)
            + f"), RSS {res['peak_rss_mib']:.0f} MiB, load {load:.2f}"
        )
        log(
            f"    change report: {res['change_report_s']:.2f} s for "
            f"{res['change_report_lines']:,} lines ({res['change_report_bytes'] / 2**20:.1f} MiB)"
            f", x{res['change_report_to_upload']} the upload, x{res['change_report_to_copy']} "
            "the raw COPY"
        )
        log(
            "    RSS MiB by step (peak/end): "
            + ", ".join(
                f"{k} {v['peak_mib']:.0f}/{v.get('end_mib', 0):.0f}"
                for k, v in res.get("rss_steps", {}).items()
            )
        )
        return res

    for chain in _families(wanted):
        lead = SCENARIOS[chain[0]]
        files = prepare(url, lead.shape, variant, lead.database, log)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in chain}
        commands: dict[str, list[dict[str, Any]]] = {n: [] for n in chain}
        sanity: dict[str, Any] = {}
        plan = [("engine", i) for i in range(args.runs)]
        plan += [("command", i) for i in range(args.command_runs)]
        for mode, i in plan:
            _recreate(url, _dbname(url), files.template)
            for name in chain:
                res = one_run(name, files, mode, i)
                (commands if mode == "command" else runs)[name].append(res)
            sanity = db_counts(url)
        for name in chain:
            if name in wanted:
                report["scenarios"][name] = _summarise(runs[name], commands[name])
                report["scenarios"][name]["database"] = SCENARIOS[name].database
                report["scenarios"][name]["db_after"] = sanity
        if args.reference_sample >= 0 and lead.database == "fresh" and chain[0] in wanted:
            log(f"  reference on {lead.shape} (sample {args.reference_sample or 'all'}) ...")
            _recreate(url, _dbname(url), files.template)
            ref = _spawn(
                "reference",
                url,
                str(files.file),
                str(files.passwords),
                str(args.reference_sample),
            )
            nightly = runs[chain[0]]
            engine_per_row = statistics.median(r["without_hashing_s"] / r["rows"] for r in nightly)
            ref["engine_us_per_row"] = round(engine_per_row * 1e6, 2)
            ref["speedup_per_row"] = round(ref["us_per_row"] / (engine_per_row * 1e6), 1)
            # for context: the engine's in-memory steps only (the reference has no database)
            in_memory = statistics.median(
                sum(r["steps"].get(k, 0.0) for k in ("read", "validate", "plan")) / r["rows"]
                for r in nightly
            )
            ref["engine_in_memory_us_per_row"] = round(in_memory * 1e6, 2)
            ref["speedup_in_memory"] = round(ref["us_per_row"] / (in_memory * 1e6), 1)
            report["scenarios"][chain[0]]["reference"] = ref
            log(f"  reference: {ref['us_per_row']} us/row, engine x{ref['speedup_per_row']} faster")

    with psycopg.connect(_admin_url(url), autocommit=True) as admin:  # not a cached template
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(_dbname(url)))
        )
    if args.hash_sample > 0:
        log(f"hashing {args.hash_sample} passwords with real argon2id on 1 and 2 workers ...")
        report["hashing"] = _spawn("hashing", str(args.hash_sample))
    report["goals"] = goals(report)
    return report


def goals(report: dict[str, Any]) -> dict[str, Any]:
    s = report["scenarios"]
    out: dict[str, Any] = {}
    for name, limit in RATIO_GOALS.items():
        if name in s:
            out[f"{name}_ratio_le_{limit:g}x"] = s[name]["median_ratio"] <= limit
    for name in s:
        if s[name]["rows"] >= 1_000_000:
            out[f"{name}_rss_le_1.5GiB"] = s[name]["peak_rss_mib"] <= RSS_GOAL_MIB
    for name, limit in GOALS.items():  # the earlier goals, in seconds
        if name in s:
            out[f"{name}_median_le_{limit:g}s"] = s[name]["median_without_hashing_s"] <= limit
    ref = s.get("nightly-1m", {}).get("reference")
    if ref:
        out["nightly-1m_speedup_ge_15x"] = ref["speedup_per_row"] >= SPEEDUP_GOAL
    for name in s:  # the change report must not double an upload's time
        out[f"{name}_change_report_lt_upload"] = s[name]["change_report"]["median_to_upload"] < 1
    for name in s:
        out[f"{name}_licenses_consistent"] = s[name]["db_after"]["licenses_consistent"]
    for name in ("replay", "replay-aged"):
        if name in s:
            out[f"{name}_hashes_nothing"] = s[name]["hashed_passwords"] == 0
    if "hashing" in report:
        out["hash_scaling_ge_1.8x"] = report["hashing"]["scaling_2_over_1"] >= HASH_SCALING_GOAL
    return out


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM; "
        f"PostgreSQL {report['postgresql']['version']}; {report['date']}; "
        f"data: {report['variant']['tag']}"
    )
    steps = (
        "read",
        "validate",
        "match",
        "hash_select",
        "load",
        "snapshot",
        "plan",
        "hash",
        "hash_inline",
        "apply",
        "apply_db",
        "record",
        "commit",
        "error_file",
    )
    head = f"{'scenario':<18}{'rows':>10}{'no-hash s':>10}{'COPY s':>8}{'ratio':>7}"
    head += "".join(f"{s[:8]:>9}" for s in steps)
    print(head + f"{'RSS MiB':>9}{'cmd s':>8}{'cmd x':>7}  load")
    for name, s in report["scenarios"].items():
        cells = "".join(f"{s['median_steps_s'].get(k, 0.0):>9.2f}" for k in steps)
        cmd = s.get("command")
        cmd_cells = f"{cmd['median_s']:>8.2f}{cmd['median_ratio']:>7.2f}" if cmd else " " * 15
        print(
            f"{name:<18}{s['rows']:>10,}{s['median_without_hashing_s']:>10.2f}"
            f"{s['median_raw_copy_s']:>8.2f}{s['median_ratio']:>7.2f}{cells}"
            f"{s['peak_rss_mib']:>9.0f}{cmd_cells}  {s['load_avg_before']}"
        )
    for name, s in report["scenarios"].items():
        c = s["counts"]
        print(
            f"{name}: added {c['added']:,} activated {c['activated']:,} deactivated "
            f"{c['deactivated']:,} updated {c['updated']:,} unchanged {c['unchanged']:,} "
            f"errors {c['errors']:,}; hashed {s['hashed_passwords']:,}; licenses consistent: "
            f"{s['db_after']['licenses_consistent']}; runs without hashing "
            f"{s['runs_without_hashing_s']}, ratios {s['runs_ratio']}; PostgreSQL's time in "
            f"the apply alone: x{s['median_apply_db_ratio']} the raw COPY"
        )
        cr = s["change_report"]
        print(
            f"  change report: {cr['lines']:,} lines, {cr['bytes'] / 2**20:.1f} MiB, "
            f"{cr['median_s']:.2f} s (runs {cr['runs_s']}): x{cr['median_to_upload']} the "
            f"upload without hashing, x{cr['median_to_copy']} the raw COPY"
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
    from bench.generate import N_SCHOOLS, SEED

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--scenario",
        default="all",
        help=f"'all' ({', '.join(DEFAULT_SCENARIOS)}) or a comma-separated list of: "
        f"{', '.join(SCENARIOS)}",
    )
    p.add_argument("--runs", type=int, default=3, help="in-process engine runs per scenario")
    p.add_argument(
        "--command-runs",
        type=int,
        default=1,
        help="runs of the whole `eams process` command per scenario (0: skip)",
    )
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
    g = p.add_argument_group("the data set (generator variants)")
    g.add_argument("--seed", type=int, default=SEED)
    g.add_argument(
        "--quoting",
        choices=("all", "minimal"),
        default="all",
        help="all: every value quoted (pyarrow); minimal: as Python's csv module writes it",
    )
    g.add_argument("--schools", type=int, default=N_SCHOOLS, help="schools (2-998)")
    g.add_argument(
        "--names",
        choices=("default", "wide"),
        default="default",
        help="name and class distributions (wide: 10x the last names, longer, more classes)",
    )
    args = p.parse_args(argv)
    if not 2 <= args.schools <= 998:
        p.error("--schools must be between 2 and 998")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = benchmark(args)
    print_table(report)
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":  # worker entry points: python -m bench.run <worker> args...
    kind, rest = sys.argv[1], sys.argv[2:]
    # The engine as a production install runs it: hypothesis is a test-only dependency, and
    # pandera imports it on its first validation whenever it can (0.15 s per process,
    # measured: README "Speed"). None in sys.modules makes its import fail as when absent.
    sys.modules["hypothesis"] = None  # type: ignore[assignment]
    if kind == "engine":
        result = worker_engine(*rest)
    elif kind == "reference":
        result = worker_reference(rest[0], rest[1], rest[2], int(rest[3]))
    elif kind == "hashing":
        result = worker_hashing(int(rest[0]))
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps(result))
