"""The fleet benchmark: many districts on one deployment.

    .venv/bin/python -m bench.fleet --districts 2000 --idle-seconds 600 --burst 500

One command, everything on 127.0.0.1, every wait bounded, every process group it starts
killed at the end, its two databases dropped (unless --keep):

1. setup: N districts in a fresh MY Access database (``<db>`` and ``<db>_dagster``), one
   chrooted account each on a loopback SFTP server, a loopback SMTP server (both in a
   separate process, ``serve``, so their CPU is not counted as ours);
2. load: the code location's cost in a new process: interpreter start and imports, then
   ``build_definitions`` for the N districts (what every run worker pays too);
3. ticks in-process: a sample of district sensors evaluated with ``build_sensor_context`` and
   the real resources, CPU seconds per tick cold (new SSH connection, settings query) and warm
   (pooled connection, cached settings), and the old way (no pool, no cache);
4. idle watch (the real thing): ``dagster code-server start`` + ``dagster-daemon run`` with
   the shipped ``dagster.yaml`` on PostgreSQL storage; tick timestamps read from the
   instance's ``job_ticks``: the largest gap between two ticks of a sensor against 2x the
   interval, and the CPU of both process trees per tick and per hour;
5. overhead: single 20-row uploads, one at a time: the run worker's CPU (process start,
   code-location load, steps) from its run request to the email;
6. burst: B uploads dropped within a few seconds, into B districts: the time until all are
   applied, published and emailed, and the CPU per upload.

CPU is read from ``/proc/<pid>/stat`` of every process in the started sessions, sampled every
0.1 s (a process that lives less than that is missed; each process's last <0.1 s too).
The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/eams_fleet"
HOST = "127.0.0.1"
PASSWORD_ENV = "EAMS_FLEET_SFTP_PASSWORD"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOCATION = "eams_pipeline"
TICK_GOAL_FACTOR = 2.0
OVERHEAD_GOAL_CPU = 3.0
BURST_GOAL_SECONDS = 15 * 60


def code(i: int) -> str:
    return f"F{i:05d}"


def user(i: int) -> str:
    return f"f{i:05d}"


# ---------------------------------------------------------------------------------------
# CPU accounting of process trees (sessions)
# ---------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(session id, CPU seconds of the process itself)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[3]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class CpuSampler:
    """Every 0.1 s, the CPU of every process in the watched sessions (last value seen)."""

    def __init__(self) -> None:
        self.sessions: dict[int, str] = {}  # sid -> name
        self.seen: dict[int, tuple[str, float, str, float, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, sid: int, name: str) -> None:
        with self._lock:
            self.sessions[sid] = name

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            st = _stat(pid)
            if st is None or st[0] not in self.sessions:
                continue
            with self._lock:
                old = self.seen.get(pid)
                if old is None:
                    self.seen[pid] = (self.sessions[st[0]], st[1], _cmdline(pid), now, now)
                else:
                    self.seen[pid] = (old[0], st[1], old[2], old[3], now)

    def total(self, name: str | None = None) -> float:
        with self._lock:
            return sum(v[1] for v in self.seen.values() if name is None or v[0] == name)

    def snapshot(self) -> dict[int, tuple[str, float, str, float, float]]:
        with self._lock:
            return dict(self.seen)


def cpu_between(
    before: dict[int, tuple], after: dict[int, tuple], name: str | None = None
) -> float:
    total = 0.0
    for pid, v in after.items():
        if name is not None and v[0] != name:
            continue
        total += v[1] - (before[pid][1] if pid in before else 0.0)
    return total


def is_run_worker(cmd: str) -> bool:
    if "resource_tracker" in cmd or "forkserver" in cmd:
        return False
    return "multiprocessing" in cmd or "execute_run" in cmd or "execute-run" in cmd


# ---------------------------------------------------------------------------------------
# The servers process (SFTP + SMTP), so that their CPU is not the pipeline's
# ---------------------------------------------------------------------------------------


def serve(state: Path, users: int) -> None:
    from eams_pipeline.devtools.sftp_server import LoopbackSftpServer
    from eams_pipeline.devtools.smtp_server import LoopbackSmtpServer

    password = os.environ[PASSWORD_ENV]
    sftp = LoopbackSftpServer(
        state / "sftp", {user(i): password for i in range(users)},
        host_key_path=state / "host_key",
    )  # fmt: skip
    smtp = LoopbackSmtpServer(state / "mail")
    sftp.start()
    smtp.start()
    for i in range(users):
        for sub in ("incoming", "errors", "processed"):
            (sftp.user_dir(user(i)) / sub).mkdir(parents=True, exist_ok=True)
    (state / "servers.json").write_text(
        json.dumps({"sftp_port": sftp.port, "host_key": sftp.host_key_line,
                    "smtp_port": smtp.port})
    )  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    smtp.stop()
    sftp.stop()


# ---------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------


def district_doc(i: int, servers: dict[str, Any]) -> dict[str, Any]:
    c = code(i)
    return {
        "code": c,
        "name": f"Fleet district {c}",
        "timezone": "America/Chicago",
        "contacts": [f"sis@{c.lower()}.example.org"],
        "sftp": {
            "host": HOST,
            "port": servers["sftp_port"],
            "username": user(i),
            "password_env": PASSWORD_ENV,
            "host_key": servers["host_key"],
            "root": "/",
        },
        "holding_bin_school": f"{c}-HB",
        "enterprise_order": {"number": f"ENT-{c}", "licenses": 5000},
        "schools": [
            {"code": f"{c}-HB", "name": "Enterprise Holding Bin School"},
            {"code": "101", "name": "Lincoln Elementary"},
            {"code": "102", "name": "Roosevelt Middle"},
        ],
        "guard": "off",
    }


def students_csv(district: str, rows: int, tag: str) -> bytes:
    """``rows`` new students, every row valid (each has a password: argon2id per row)."""
    from eams_pipeline.core.template import HEADER

    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for n in range(rows):
        sid = f"{district}-{tag}-{n:05d}"
        writer.writerow(["101" if n % 2 else "102", sid, f"Last{n}", "First", "",
                         str(1 + n % 12), f"{district}{tag}{n}".lower(), f"Pw-{sid}", "", "",
                         "A"])  # fmt: skip
    return out.getvalue().encode("utf-8")


def drop_file(state: Path, i: int, data: bytes) -> None:
    """Write students.csv atomically into the district's incoming/ (as a finished upload)."""
    incoming = state / "sftp" / user(i) / "incoming"
    tmp = incoming / ".students.csv.part"
    tmp.write_bytes(data)
    tmp.rename(incoming / "students.csv")


def recreate_databases(url: str) -> str:
    admin = make_conninfo(url, dbname="postgres")
    dagster_url = make_conninfo(url, dbname=conninfo_to_dict(url)["dbname"] + "_dagster")
    with psycopg.connect(admin, autocommit=True) as conn:
        for u in (url, dagster_url):
            name = sql.Identifier(conninfo_to_dict(u)["dbname"])
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return dagster_url


def drop_databases(url: str) -> None:
    admin = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in (conninfo_to_dict(url)["dbname"], conninfo_to_dict(url)["dbname"] + "_dagster"):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def load_districts(url: str, n: int, servers: dict[str, Any]) -> float:
    from eams_pipeline.core.master_data import parse_master_data
    from eams_pipeline.db import migrations
    from eams_pipeline.db.setup import load_master_data

    started = time.monotonic()
    text = yaml.safe_dump({"districts": [district_doc(i, servers) for i in range(n)]})
    with psycopg.connect(url) as conn:
        migrations.upgrade(conn)
        conn.commit()
        load_master_data(conn, parse_master_data(text))
        conn.commit()
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


class Processes:
    def __init__(self, logs: Path, sampler: CpuSampler) -> None:
        self.logs = logs
        self.sampler = sampler
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            argv, env=env, cwd=self.logs, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.started[name] = proc
        self.sampler.watch(proc.pid, name)
        return proc

    def stop(self, name: str) -> None:
        from eams_pipeline.devtools.demo import group_alive

        proc = self.started.pop(name, None)
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and group_alive(proc.pid):
                time.sleep(0.2)
                proc.poll()
            if not group_alive(proc.pid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        for name in reversed(list(self.started)):
            self.stop(name)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(what: str, check, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready within {timeout:.0f}s (last error: {last})")


def grpc_loaded(port: int) -> bool:
    import socket

    from dagster._grpc.client import DagsterGrpcClient

    with socket.create_connection((HOST, port), timeout=2):
        pass
    client = DagsterGrpcClient(port=port, host=HOST)
    if client.health_check_query() != "SERVING":
        return False
    return LOCATION in client.list_repositories()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------
# Measurements in subprocesses
# ---------------------------------------------------------------------------------------

LOAD_PROBE = r"""
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
t0 = cpu()
import dagster  # noqa
t1 = cpu()
import eams_pipeline.orchestration.code_location as d
t2 = cpu()
defs = d.build_definitions()
t3 = cpu()
print(json.dumps({"start_and_import_dagster": t1, "import_eams": t2 - t1,
                  "build_definitions": t3 - t2, "total": t3,
                  "sensors": len(list(defs.sensors or []))}))
"""

TICK_PROBE = r"""
import json, sys, time
import dagster as dg
from eams_pipeline.orchestration.code_location import build_definitions
from eams_pipeline.orchestration.resources import default_resources, SftpResource
from eams_pipeline.orchestration.district_sensors import build_district_sensors
codes, rounds, old = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "old"
res = default_resources()
if old:  # as before: a new SSH connection and the district's row every tick, and Dagster
    # building the three resources the sensor takes for every tick (as the code server does)
    res["sftp"] = SftpResource(idle_timeout_seconds=0)
    sensors = build_district_sensors(codes, cache_seconds=0)
    ctx_res = {k: res[k] for k in ("db", "sftp", "smtp")}
else:  # the sensors as the code location builds them (resources bound, nothing per tick)
    defs = build_definitions(codes, resources=res)
    sensors = [defs.resolve_sensor_def(s.name) for s in build_district_sensors(codes)]
    ctx_res = None
out = []
with dg.instance_for_test() as instance:
    for r in range(rounds):
        t0 = time.process_time(); w0 = time.monotonic()
        for s in sensors:
            kw = {"resources": ctx_res} if ctx_res else {}
            s(dg.build_sensor_context(instance=instance, sensor_name=s.name, **kw))
        out.append({"cpu": (time.process_time() - t0) / len(sensors),
                    "wall": (time.monotonic() - w0) / len(sensors)})
print(json.dumps(out))
"""


# The code server and its run workers as the image has them: hypothesis is a test-only
# dependency (not in the image), which pandera imports on its first validation whenever it
# can (0.1-0.15 s of CPU per run worker); None in sys.modules makes that import fail as when
# it is absent (bench/run.py does the same for the engine's workers).
PRODUCTION_LIKE = """
import sys
sys.modules["hypothesis"] = None
"""

# --profile-workers DIR: every run worker of the code server (a multiprocessing child) is
# profiled by cProfile on CPU time from its interpreter's start (imports included) to its
# exit, one DIR/worker-<pid>.prof each (`python -m pstats`); the timer's own cost inflates
# the figures, the proportions stand. Only for finding where the CPU goes.
WORKER_PROFILE = r"""
import os
with open("/proc/self/cmdline", "rb") as _fh:
    _cmd = _fh.read()
if b"spawn_main" in _cmd and b"resource_tracker" not in _cmd:
    import atexit, cProfile, time
    _profile = cProfile.Profile(time.process_time)
    _profile.enable()

    def _dump():
        _profile.disable()
        _profile.dump_stats(os.path.join(OUT, "worker-%d.prof" % os.getpid()))

    atexit.register(_dump)
"""


def code_server_site(state: Path, profile_out: Path | None) -> str:
    """A directory holding the code server's sitecustomize (PRODUCTION_LIKE, and
    WORKER_PROFILE into `profile_out` when given)."""
    site = state / "site"
    site.mkdir(parents=True, exist_ok=True)
    text = PRODUCTION_LIKE
    if profile_out is not None:
        profile_out.mkdir(parents=True, exist_ok=True)
        text += f"OUT = {str(profile_out)!r}\n" + WORKER_PROFILE
    (site / "sitecustomize.py").write_text(text)
    return str(site)


def run_probe(script: str, args: list[str], env: dict[str, str], timeout: float) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# Reading the Dagster instance
# ---------------------------------------------------------------------------------------


def sensor_ticks(dagster_url: str, since: float, until: float) -> dict[str, list[float]]:
    """Tick start times (epoch seconds) per sensor name within [since, until]."""
    out: dict[str, list[float]] = {}
    with psycopg.connect(dagster_url) as conn:
        rows = conn.execute(
            """SELECT tick_body::json->>'job_name',
                      (tick_body::json->>'timestamp')::float8 AS ts
               FROM job_ticks WHERE type = 'SENSOR'
                 AND timestamp >= now() AT TIME ZONE 'UTC' - interval '3 hours'
               ORDER BY 1, 2"""
        ).fetchall()
        rows = [(name, ts) for name, ts in rows if since <= ts <= until]
    for name, ts in rows:
        out.setdefault(name, []).append(float(ts))
    return out


def tick_figures(ticks: dict[str, list[float]], names: list[str], since: float, until: float,
                 interval: float) -> dict[str, Any]:  # fmt: skip
    """Per sensor: gaps between consecutive ticks, and from the window's start to its first
    tick and from its last tick to the window's end (a sensor that stops ticking shows)."""
    gaps: list[float] = []
    worst: dict[str, float] = {}
    for name in names:
        ts = ticks.get(name, [])
        points = [since, *ts, until]
        g = [b - a for a, b in itertools.pairwise(points)]
        inner = [b - a for a, b in itertools.pairwise(ts)]
        gaps.extend(inner)
        worst[name] = max(g)
    total = sum(len(ticks.get(n, [])) for n in names)
    late = sorted(worst.values())
    return {
        "sensors": len(names),
        "ticks": total,
        "ticks_per_sensor": total / max(1, len(names)),
        "gap_median_s": statistics.median(gaps) if gaps else None,
        "gap_p95_s": _quantile(gaps, 0.95),
        "gap_max_s": max(gaps) if gaps else None,
        "worst_gap_incl_window_edges_s": late[-1] if late else None,
        "sensors_over_2x": sum(1 for v in late if v > TICK_GOAL_FACTOR * interval),
        "sensors_without_tick": sum(1 for n in names if not ticks.get(n)),
    }


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_records(dagster_url: str, since: float) -> list[dict[str, Any]]:
    """Runs created after ``since``: status, create/start/end times (epoch) and tags."""
    with psycopg.connect(dagster_url) as conn:
        rows = conn.execute(
            """SELECT run_id, status, extract(epoch FROM create_timestamp), start_time,
                      end_time, run_body::json->'tags'
               FROM runs WHERE create_timestamp >= (to_timestamp(%s) AT TIME ZONE 'UTC')""",
            (since,),
        ).fetchall()
    return [
        {"run_id": r[0], "status": r[1], "created": float(r[2]), "start": r[3], "end": r[4],
         "tags": r[5] or {}}
        for r in rows
    ]  # fmt: skip


def step_times(dagster_url: str, run_ids: list[str]) -> dict[str, float]:
    """Median wall seconds per step over the runs (from the event log's step events)."""
    if not run_ids:
        return {}
    per: dict[str, list[float]] = {}
    with psycopg.connect(dagster_url) as conn:
        rows = conn.execute(
            """SELECT run_id, step_key, dagster_event_type, extract(epoch FROM timestamp)
               FROM event_logs WHERE run_id = ANY(%s) AND dagster_event_type IN
                 ('STEP_START', 'STEP_SUCCESS', 'STEP_FAILURE')""",
            (run_ids,),
        ).fetchall()
        events = conn.execute(
            """SELECT run_id, dagster_event_type, extract(epoch FROM timestamp)
               FROM event_logs WHERE run_id = ANY(%s) AND dagster_event_type IN
                 ('PIPELINE_STARTING', 'PIPELINE_START', 'RUN_START', 'PIPELINE_SUCCESS',
                  'RUN_SUCCESS', 'ENGINE_EVENT')""",
            (run_ids,),
        ).fetchall()
    starts: dict[tuple[str, str], float] = {}
    for run_id, step, kind, ts in rows:
        if kind == "STEP_START":
            starts[(run_id, step)] = float(ts)
        elif (run_id, step) in starts:
            per.setdefault(step, []).append(float(ts) - starts[(run_id, step)])
    first: dict[str, dict[str, float]] = {}
    for run_id, kind, ts in events:
        first.setdefault(run_id, {}).setdefault(kind, float(ts))
    med = {step: statistics.median(v) for step, v in per.items()}
    launch = [
        e["PIPELINE_START"] - e["PIPELINE_STARTING"]
        for e in first.values()
        if "PIPELINE_START" in e and "PIPELINE_STARTING" in e
    ]
    if launch:
        med["(launch: STARTING to START, process start + code load)"] = statistics.median(launch)
    return med


def emails(state: Path) -> int:
    mail = state / "mail"
    return sum(1 for _ in mail.iterdir()) if mail.exists() else 0


def uploads_done(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM uploads GROUP BY status").fetchall())


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    n = args.districts
    result: dict[str, Any] = {"districts": n, "interval_s": args.interval,
                              "settle_s": args.settle}  # fmt: skip
    state = Path(tempfile.mkdtemp(prefix="eams_fleet_"))
    sampler = CpuSampler()
    procs = Processes(state, sampler)
    password = "fleet-" + os.urandom(6).hex()
    from cryptography.fernet import Fernet

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("EAMS_", "DAGSTER_"))}
    base_env[PASSWORD_ENV] = password
    sampler.start()
    try:
        # -- 1. setup -----------------------------------------------------------------------
        t = time.monotonic()
        procs.start("servers", [sys.executable, "-m", "bench.fleet", "serve", "--state",
                                str(state), "--users", str(n)],
                    base_env | {"PYTHONPATH": str(ROOT)})  # fmt: skip
        servers = wait_for("the SFTP/SMTP servers",
                           lambda: json.loads((state / "servers.json").read_text()),
                           120, 0.5)  # fmt: skip
        dagster_url = recreate_databases(args.database_url)
        load_s = load_districts(args.database_url, n, servers)
        print(f"setup: {n} districts loaded in {load_s:.1f}s, servers up "
              f"({time.monotonic() - t:.1f}s in all)", flush=True)  # fmt: skip
        pg = conninfo_to_dict(dagster_url)
        home = state / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        dagster_env = {
            "DAGSTER_HOME": str(home),
            "EAMS_DAGSTER_PG_HOST": str(pg.get("host") or HOST),
            "EAMS_DAGSTER_PG_PORT": str(pg.get("port") or 5432),
            "EAMS_DAGSTER_PG_USER": str(pg.get("user") or "postgres"),
            "EAMS_DAGSTER_PG_PASSWORD": str(pg.get("password") or ""),
            "EAMS_DAGSTER_PG_DB": str(pg["dbname"]),
        }
        location_env = (
            base_env
            | dagster_env
            | {
                "PYTHONPATH": str(ROOT),
                "EAMS_DATABASE_URL": args.database_url,
                "EAMS_SECRET_KEY": os.urandom(32).hex(),
                "EAMS_ARCHIVE_KEY": Fernet.generate_key().decode(),
                "EAMS_ARCHIVE_DIR": str(state / "archive"),
                "EAMS_SMTP_HOST": HOST,
                "EAMS_SMTP_PORT": str(servers["smtp_port"]),
                "EAMS_SMTP_SECURITY": "none",
                "EAMS_MAIL_FROM": "eams-noreply@eams.example.com",
                "EAMS_OPERATOR_EMAILS": "",
                "EAMS_SETTLE_SECONDS": str(args.settle),
                **({"EAMS_SENSOR_INTERVAL_SECONDS": str(args.interval)} if args.interval else {}),
            }
        )
        from eams_pipeline.config import DEFAULT_SENSOR_INTERVAL_SECONDS

        interval = args.interval or DEFAULT_SENSOR_INTERVAL_SECONDS
        result["interval_s"] = interval

        # -- 2. the code location's load ------------------------------------------------------
        load = run_probe(LOAD_PROBE, [], location_env, 300)
        result["location_load_cpu_s"] = load
        print(f"code location load (new process, {load['sensors']} sensors): "
              f"start+import dagster {load['start_and_import_dagster']:.2f}s, "
              f"import eams {load['import_eams']:.2f}s, build_definitions "
              f"{load['build_definitions']:.2f}s CPU", flush=True)  # fmt: skip

        # -- 3. ticks in-process ------------------------------------------------------------
        sample = [code(i) for i in range(min(n, args.tick_sample))]
        new = run_probe(TICK_PROBE, [json.dumps(sample), "3", "new"], location_env, 600)
        old = run_probe(TICK_PROBE, [json.dumps(sample), "3", "old"], location_env, 600)
        result["tick_in_process"] = {"sample": len(sample), "new_cold": new[0],
                                     "new_warm": new[2], "old": old[2]}  # fmt: skip
        print(f"tick in-process ({len(sample)} sensors): CPU per tick cold "
              f"{new[0]['cpu'] * 1000:.1f} ms, warm (pooled SSH, cached settings) "
              f"{new[2]['cpu'] * 1000:.1f} ms; without pool, cache and bound resources "
              f"{old[2]['cpu'] * 1000:.1f} ms", flush=True)  # fmt: skip

        # -- 4. the real daemon: idle watch -------------------------------------------------
        grpc_port = free_port()
        (state / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
            "host": HOST, "port": grpc_port, "location_name": LOCATION}}]}))  # fmt: skip
        t0 = time.monotonic()
        profile = args.profile_workers.resolve() if args.profile_workers else None
        server_env = location_env | {
            "PYTHONPATH": code_server_site(state, profile) + os.pathsep + str(ROOT)
        }
        procs.start("code-server", [str(BIN / "dagster"), "code-server", "start", "-m",
                                    "eams_pipeline.definitions", "--host", HOST, "--port",
                                    str(grpc_port), "--location-name", LOCATION,
                                    "--use-python-environment-entry-point"],
                    server_env)  # fmt: skip
        try:
            wait_for("the code server", lambda: grpc_loaded(grpc_port), 300, 1)
        except TimeoutError:
            print(procs.tail("code-server"), file=sys.stderr)
            raise
        result["code_server_ready_s"] = time.monotonic() - t0
        services_env = base_env | dagster_env
        procs.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w",
                               str(state / "workspace.yaml")], services_env)  # fmt: skip
        print(
            f"code server ready in {result['code_server_ready_s']:.1f}s; daemon started; "
            f"idle watch {args.idle_seconds}s after {args.warmup}s warm-up",
            flush=True,
        )
        time.sleep(args.warmup)
        w_start, snap0 = time.time(), sampler.snapshot()
        time.sleep(args.idle_seconds)
        w_end, snap1 = time.time(), sampler.snapshot()
        from eams_pipeline.orchestration.district_sensors import sensor_name

        names = [sensor_name(code(i)) for i in range(n)]
        ticks = sensor_ticks(dagster_url, w_start, w_end)
        figs = tick_figures(ticks, names, w_start, w_end, interval)
        cpu_cs = cpu_between(snap0, snap1, "code-server")
        cpu_daemon = cpu_between(snap0, snap1, "daemon")
        cpu_servers = cpu_between(snap0, snap1, "servers")
        span = w_end - w_start
        figs |= {
            "window_s": span,
            "cpu_code_server_s": cpu_cs,
            "cpu_daemon_s": cpu_daemon,
            "cpu_sftp_server_s": cpu_servers,
            "cpu_per_tick_s": (cpu_cs + cpu_daemon) / max(1, figs["ticks"]),
            "cpu_per_idle_hour_s": (cpu_cs + cpu_daemon) * 3600 / span,
            "cores_busy": (cpu_cs + cpu_daemon) / span,
            "expected_ticks": n * span / interval,
        }
        figs["verdict"] = (
            "MET" if figs["sensors_over_2x"] == 0 and figs["sensors_without_tick"] == 0
            and figs["cores_busy"] < 1.0 else "NOT MET"
        )  # fmt: skip
        result["idle"] = figs
        print(f"idle: {figs['ticks']} ticks of {n} sensors in {span:.0f}s "
              f"(expected {figs['expected_ticks']:.0f}); gap median {figs['gap_median_s']}, "
              f"p95 {figs['gap_p95_s']}, max {figs['gap_max_s']} s; sensors over 2x "
              f"{figs['sensors_over_2x']}, without a tick {figs['sensors_without_tick']}; "
              f"CPU code server {cpu_cs:.1f}s + daemon {cpu_daemon:.1f}s = "
              f"{figs['cpu_per_tick_s'] * 1000:.1f} ms/tick, {figs['cpu_per_idle_hour_s']:.0f} "
              f"s/hour ({figs['cores_busy']:.2f} cores); SFTP server {cpu_servers:.1f}s",
              flush=True)  # fmt: skip

        # -- 5. overhead: single small uploads, one at a time ---------------------------------
        # several small uploads at the same moment (into different districts): each run
        # worker's CPU is its own process's; the daemon's and the code server's share is
        # what they used above their idle rate, divided among the uploads
        k_up = args.overhead_uploads
        before_mail, snap_a = emails(state), sampler.snapshot()
        t_drop = time.time()
        for k in range(k_up):
            drop_file(state, k, students_csv(code(k), 20, "o"))
        wait_for("the overhead uploads' emails", lambda: emails(state) >= before_mail + k_up,
                 args.burst_timeout, 0.5)  # fmt: skip
        time.sleep(2.0)  # the run workers exit after the email step
        snap_b = sampler.snapshot()
        span_o = time.time() - t_drop
        runs = [r for r in run_records(dagster_url, t_drop - 1)
                if r["tags"].get("eams/district", "") < code(k_up)]  # fmt: skip
        # (a multiprocessing helper that lived a moment is no run worker: a run takes seconds)
        workers = {p: v for p, v in snap_b.items()
                   if is_run_worker(v[2]) and p not in snap_a and v[1] >= 0.1}  # fmt: skip
        idle_rate = (cpu_cs + cpu_daemon) / span
        services = cpu_between(snap_a, snap_b, "code-server") + cpu_between(
            snap_a, snap_b, "daemon"
        )
        services -= sum(v[1] for v in workers.values())  # the workers are in those sessions
        overhead = [
            {
                "run_worker_cpu_s": v[1],
                "cmdline": v[2][:160],
                "services_above_idle_cpu_s": (services - idle_rate * span_o) / max(1, k_up),
            }
            for v in workers.values()
        ]
        for o in overhead:
            # the services' share is within the noise of their idle ticking (can come out < 0)
            o["all_minus_idle_cpu_s"] = o["run_worker_cpu_s"] + max(
                0.0, o["services_above_idle_cpu_s"]
            )
        for o, r in zip(overhead, runs, strict=False):
            o["request_to_end_s"] = (r["end"] - r["created"]) if r["end"] else None
            o["run_ids"] = [r["run_id"]]
        for k, o in enumerate(overhead):
            print(f"overhead upload {k}: run worker {o['run_worker_cpu_s']:.2f}s CPU, with the "
                  f"services' share {o['all_minus_idle_cpu_s']:.2f}s CPU, request to end "
                  f"{o.get('request_to_end_s')}", flush=True)  # fmt: skip
        first_burst = k_up
        run_ids = [r["run_id"] for r in runs]
        med_worker = statistics.median(o["run_worker_cpu_s"] for o in overhead)
        med_all = statistics.median(o["all_minus_idle_cpu_s"] for o in overhead)
        result["overhead"] = {
            "uploads": overhead,
            "run_worker_cpu_median_s": med_worker,
            "all_above_idle_cpu_median_s": med_all,
            "steps_wall_median_s": step_times(dagster_url, run_ids),
            "verdict": "MET" if med_all <= OVERHEAD_GOAL_CPU else "NOT MET",
        }
        print(
            f"overhead: median run worker {med_worker:.2f}s CPU, all processes above idle "
            f"{med_all:.2f}s CPU; steps (wall) "
            f"{json.dumps(result['overhead']['steps_wall_median_s'])}",
            flush=True,
        )

        # -- 6. burst ---------------------------------------------------------------------
        b = min(args.burst, n - first_burst)
        before_mail, snap_a = emails(state), sampler.snapshot()
        t_drop = time.time()
        for j in range(b):
            i = first_burst + j
            drop_file(state, i, students_csv(code(i), args.burst_rows, "b"))
        drop_span = time.time() - t_drop
        print(
            f"burst: {b} uploads of {args.burst_rows} rows dropped in {drop_span:.1f}s; "
            f"waiting (at most {args.burst_timeout}s)",
            flush=True,
        )
        deadline = time.monotonic() + args.burst_timeout
        done = 0
        while time.monotonic() < deadline:
            done = emails(state) - before_mail
            if done >= b:
                break
            time.sleep(2)
        t_done = time.time()
        snap_b = sampler.snapshot()
        runs = [r for r in run_records(dagster_url, t_drop - 1)
                if r["tags"].get("eams/district", "") >= code(first_burst)]  # fmt: skip
        total = cpu_between(snap_a, snap_b) - cpu_between(snap_a, snap_b, "servers")
        workers = {p: v for p, v in snap_b.items() if is_run_worker(v[2])}
        worker_cpu = cpu_between({p: v for p, v in snap_a.items() if p in workers}, workers)
        created = sorted(r["created"] for r in runs)
        burst = {
            "uploads": b,
            "rows": args.burst_rows,
            "emailed": done,
            "all_emailed_s": (t_done - t_drop) if done >= b else None,
            "timeout_s": args.burst_timeout,
            "runs": len(runs),
            "runs_by_status": _count(r["status"] for r in runs),
            "last_run_requested_after_s": (created[-1] - t_drop) if created else None,
            "cpu_all_s": total,
            "cpu_per_upload_s": total / max(1, done),
            "run_worker_cpu_per_upload_s": worker_cpu / max(1, len(workers)),
            "uploads_table": uploads_done(args.database_url),
        }
        burst["verdict"] = (
            "MET" if done >= b and b >= args.burst and (t_done - t_drop) <= BURST_GOAL_SECONDS
            else "NOT MET"
        )  # fmt: skip
        if done < b:
            rate = done / (t_done - t_drop)
            burst["extrapolated_all_emailed_s"] = b / rate if rate else None
        result["burst"] = burst
        print(f"burst: {done}/{b} emailed in {t_done - t_drop:.0f}s; CPU per upload "
              f"{burst['cpu_per_upload_s']:.2f}s (run worker "
              f"{burst['run_worker_cpu_per_upload_s']:.2f}s)", flush=True)  # fmt: skip
    finally:
        sampler.stop()
        procs.stop_all()
        if not args.keep:
            with contextlib.suppress(Exception):
                drop_databases(args.database_url)
            import shutil

            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"kept: {state} and the databases", flush=True)
    return result


def verdicts(result: dict[str, Any]) -> dict[str, str]:
    return {
        "ticks_within_2x_interval": result.get("idle", {}).get("verdict", "NOT RUN"),
        "burst_within_15_min": result.get("burst", {}).get("verdict", "NOT RUN"),
        "overhead_le_3s_cpu": result.get("overhead", {}).get("verdict", "NOT RUN"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="(internal) the loopback SFTP and SMTP servers")
    s.add_argument("--state", type=Path, required=True)
    s.add_argument("--users", type=int, required=True)
    p.add_argument("--districts", type=int, default=2000)
    p.add_argument(
        "--interval",
        type=int,
        default=0,
        help="sensor interval in seconds (default: the pipeline's default)",
    )
    p.add_argument("--settle", type=int, default=60, help="EAMS_SETTLE_SECONDS")
    p.add_argument("--tick-sample", type=int, default=200)
    p.add_argument(
        "--warmup",
        type=int,
        default=60,
        help="seconds after the daemon starts before the idle watch",
    )
    p.add_argument("--idle-seconds", type=int, default=600)
    p.add_argument("--overhead-uploads", type=int, default=3)
    p.add_argument("--burst", type=int, default=500)
    p.add_argument("--burst-rows", type=int, default=20)
    p.add_argument("--burst-timeout", type=int, default=1200)
    p.add_argument("--database-url", default=DEFAULT_URL)
    p.add_argument("--keep", action="store_true", help="keep the databases and the state dir")
    p.add_argument(
        "--profile-workers",
        type=Path,
        default=None,
        help="write a cProfile (CPU time) of every run worker into this directory",
    )
    from bench.year import add_arguments

    add_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "serve":
        serve(args.state, args.users)
        return
    if args.year:
        from bench import year

        year.main(args)
        return
    started = dt.datetime.now(dt.UTC)
    result = benchmark(args)
    result["verdicts"] = verdicts(result)
    result["started"] = started.isoformat()
    print("verdicts: " + ", ".join(f"{k}: {v}" for k, v in result["verdicts"].items()))
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
