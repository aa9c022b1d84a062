"""`eams demo`: the whole product on one machine, on loopback only.

It creates (or reuses) a state directory, ``./var/demo`` by default, holding generated
secrets, the SFTP and mail folders, the encrypted archive and DAGSTER_HOME; creates and
migrates two databases on the local PostgreSQL (the MY Access database and Dagster's
storage); starts an SFTP server (asyncssh, one chrooted directory per district) and an SMTP
server that saves every message to a folder; loads three sample districts whose SFTP
accounts point at that server; drops a sample upload into each district's ``incoming/`` (one
clean, one with errors, one held by the change guard); and runs ``dagster dev`` with fast
sensor settings. Ctrl-C or SIGTERM stops everything it started.

One demo per state directory: it holds ``<state>/demo.lock`` (``fcntl.flock``, its PID
inside) for its lifetime, and a second one refuses to start, naming the lock and the PID.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import io
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eams_pipeline.core.master_data import parse_master_data
from eams_pipeline.core.names import DISTRICT_DIRS
from eams_pipeline.core.template import HEADER
from eams_pipeline.db import migrations
from eams_pipeline.db.connection import create_database_if_missing
from eams_pipeline.db.setup import load_master_data
from eams_pipeline.devtools.sftp_server import LoopbackSftpServer
from eams_pipeline.devtools.smtp_server import LoopbackSmtpServer
from eams_pipeline.io.archive import generate_key

DEFAULT_STATE_DIR = Path("var/demo")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eams_demo"
DAGSTER_DB_SUFFIX = "_dagster"
LOCK_FILE = "demo.lock"
HOST = "127.0.0.1"
OPERATORS = "eams-operators@eams.example.com"
USERS = {"D001": "d001", "D002": "d002", "D003": "d003"}  # district code -> SFTP user
_STOP_TIMEOUT_SECONDS = 60

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    database_url: str = DEFAULT_DATABASE_URL
    ui_port: int = 3000
    sftp_port: int = 2222
    smtp_port: int = 2525
    interval_seconds: int = 5
    settle_seconds: int = 5
    samples: bool = True
    reset: bool = False


def repo_root() -> Path:
    """The directory holding dagster.yaml and workspace.yaml (the checkout): the nearest
    folder above this module that has them, else the current directory."""
    for candidate in (*Path(__file__).resolve().parents, Path.cwd()):
        if (candidate / "dagster.yaml").is_file() and (candidate / "workspace.yaml").is_file():
            return candidate
    raise FileNotFoundError("run the demo from the eams-pipeline checkout (no dagster.yaml)")


class DemoAlreadyRunning(RuntimeError):
    """Another demo holds the state directory's lock."""


@contextlib.contextmanager
def demo_lock(state: Path) -> Iterator[Path]:
    """Hold ``<state>/demo.lock`` (an exclusive ``flock``, released when the process ends,
    however it ends) with this process's PID in it; refuse when another process holds it."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by dagster dev
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise DemoAlreadyRunning(
            f"another demo of this checkout is running (PID {holder}, holding the lock "
            f"{path}): stop it first (Ctrl-C in its terminal, or kill {holder}), or give "
            "this one another --state-dir and --database-url"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def clear_state(state: Path) -> None:
    """--reset: empty the state directory, but for the lock this demo holds."""
    for entry in state.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _port_or_free(port: int) -> int:
    """``port`` if it can be bound on 127.0.0.1, else 0 (an ephemeral one)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return 0
    return port


def _free_port(preferred: int) -> int:
    if _port_or_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- secrets, databases, master data, samples ----------------------------------------------


def load_or_create_secrets(state_dir: Path) -> dict[str, str]:
    """Secrets generated on first start, kept in ``<state>/secrets.json`` (mode 0600)."""
    path = state_dir / "secrets.json"
    if path.exists():
        values = json.loads(path.read_text(encoding="utf-8"))
        missing = {
            f"EAMS_SFTP_{code}_PASSWORD": secrets.token_urlsafe(18)
            for code in USERS
            if f"EAMS_SFTP_{code}_PASSWORD" not in values
        }
        if missing:  # a district added to the demo since the secrets were made
            values |= missing
            path.write_text(json.dumps(values, indent=2), encoding="utf-8")
        return values
    values = {
        "EAMS_SECRET_KEY": secrets.token_hex(32),
        "EAMS_ARCHIVE_KEY": generate_key(),
        **{f"EAMS_SFTP_{code}_PASSWORD": secrets.token_urlsafe(18) for code in USERS},
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2)
    return values


def dagster_database_url(database_url: str) -> str:
    name = conninfo_to_dict(database_url).get("dbname") or "eams_demo"
    return make_conninfo(database_url, dbname=f"{name}{DAGSTER_DB_SUFFIX}")


def drop_databases(database_url: str) -> None:
    admin = make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for url in (database_url, dagster_database_url(database_url)):
            name = conninfo_to_dict(url)["dbname"]
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def prepare_databases(database_url: str) -> bool:
    """Create (when missing) and migrate the demo's databases; False when the MY Access
    database was there already (the demo reuses it, with its students and uploads)."""
    created = create_database_if_missing(database_url)
    create_database_if_missing(dagster_database_url(database_url))
    with psycopg.connect(database_url) as conn:
        migrations.upgrade(conn)
    return created


def reuse_note(database_url: str, state: Path) -> str:
    """What the demo says when it starts on the database of an earlier demo."""
    name = conninfo_to_dict(database_url).get("dbname") or "eams_demo"
    return (
        f"reusing the demo database {name} and {state} of an earlier demo (its students, "
        "uploads and Dagster runs are kept); to start over, stop this demo and run "
        "`scripts/demo --reset`"
    )


def master_data(sftp: LoopbackSftpServer) -> dict:
    def account(code: str) -> dict:
        return {
            "host": HOST,
            "port": sftp.port,
            "username": USERS[code],
            "password_env": f"EAMS_SFTP_{code}_PASSWORD",
            "host_key": sftp.host_key_line,
            "root": "/",
        }

    return {
        "districts": [
            {
                "code": "D001",
                "name": "Springfield Unified School District",
                "timezone": "America/Chicago",
                "contacts": [
                    "sis-admin@springfield.example.org",
                    "it-helpdesk@springfield.example.org",
                ],
                "sftp": account("D001"),
                "holding_bin_school": "D001-HB",
                "enterprise_order": {"number": "ENT-2026-D001", "licenses": 5000},
                "schools": [
                    {"code": "D001-HB", "name": "Enterprise Holding Bin School"},
                    {"code": "101", "name": "Lincoln Elementary School"},
                    {"code": "102", "name": "Roosevelt Middle School"},
                    {"code": "201", "name": "Springfield High School"},
                ],
                "regular_orders": [{"number": "ORD-2025-0042", "school": "201", "licenses": 120}],
                # its one pre-loaded student moves to Enterprise in the sample (1 of 1
                # updated): the update rule is off here, the other two at their defaults
                "guard": {"max_updated_pct": 0},
                "existing_students": [
                    {
                        "student_id": "S-000017",
                        "school": "201",
                        "last_name": "Alvarez",
                        "first_name": "Maria",
                        "grade": "10",
                        "username": "malvarez17",
                        "order": "ORD-2025-0042",
                        "status": "active",
                    }
                ],
            },
            {
                "code": "D002",
                "name": "Shelbyville School District",
                "timezone": "America/New_York",
                "contacts": ["sis@shelbyville.example.org"],
                "sftp": account("D002"),
                "holding_bin_school": "D002-HB",
                "enterprise_order": {"number": "ENT-2026-D002", "licenses": 4},
                "schools": [
                    {"code": "D002-HB", "name": "Enterprise Holding Bin School"},
                    {"code": "301", "name": "Shelbyville Elementary"},
                    {"code": "302", "name": "Shelbyville High"},
                    {"code": "390", "name": "Old Annex (closed)", "active": False},
                ],
            },
            {
                # the change guard at its defaults (docs/safe-uploads.md): last night's
                # upload (every student, applied before the demo starts) is the baseline; the
                # sample file marks most of the district's active students D and is held for review
                "code": "D003",
                "name": "Ogdenville Public Schools",
                "timezone": "America/Denver",
                "contacts": ["sis-team@ogdenville.example.org"],
                "sftp": account("D003"),
                "holding_bin_school": "D003-HB",
                "enterprise_order": {"number": "ENT-2026-D003", "licenses": 60},
                "schools": [
                    {"code": "D003-HB", "name": "Enterprise Holding Bin School"},
                    {"code": "501", "name": "Ogdenville Elementary"},
                    {"code": "502", "name": "Ogdenville High"},
                ],
                "existing_students": [
                    {
                        "student_id": sid,
                        "school": school,
                        "last_name": last,
                        "first_name": first,
                        "grade": grade,
                        "username": username,
                        "order": "ENT-2026-D003",
                        "status": "active",
                    }
                    for sid, school, last, first, grade, username in _D003_STUDENTS
                ],
            },
        ]
    }


_D003_NAMES = [
    ("Abbott", "Ada"), ("Baker", "Ben"), ("Chen", "Cai"), ("Diaz", "Dora"),
    ("Evans", "Eli"), ("Fischer", "Fay"), ("Gupta", "Gia"), ("Hughes", "Hal"),
    ("Ivanova", "Ira"), ("Jones", "Jay"), ("Khan", "Kai"), ("Lopez", "Liv"),
    ("Mensah", "Max"), ("Nakamura", "Nia"), ("Olsen", "Oli"), ("Patel", "Pia"),
    ("Quinn", "Quin"), ("Reyes", "Rae"), ("Sato", "Sam"), ("Tanaka", "Tia"),
]  # fmt: skip
_D003_STUDENTS = [
    (f"O-3{i:05d}", "501" if i < 24 else "502", last, first, str(1 + i % 12),
     f"{first[0]}{last}{i}".lower())
    for i, (last, first) in enumerate(_D003_NAMES * 2)
]  # fmt: skip


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def sample_clean() -> bytes:
    """D001: every row valid (creates, one deactivated, the existing student moves)."""
    rows = [
        ["101", "S-100001", "Nguyen", "An", "", "3", "anguyen1", "Sunrise-1101", "", "3B", "A"],
        ["101", "S-100002", "Okafor", "Chidi", "", "K", "cokafor2", "Sunrise-1102", "", "", "A"],
        ["102", "S-100003", "Schmidt", "Lena", "Marie", "07", "lschmidt3", "Sunrise-1103",
         "lena.schmidt@springfield.example.org", "7A", "A"],
        ["102", "S-100004", "Haddad", "Omar", "", "8", "ohaddad4", "Sunrise-1104", "", "", "X"],
        ["201", "S-100005", "Kowalski", "Ewa", "", "11", "ekowalski5", "Sunrise-1105", "", "", "A"],
        ["201", "S-000017", "Alvarez", "Maria", "", "10", "malvarez17", "Sunrise-1117", "", "",
         "A"],
    ]  # fmt: skip
    return _csv(rows)


def sample_with_errors() -> bytes:
    """D002: valid rows and rows with errors (4 licenses for 6 activations)."""
    rows = [
        ["301", "T-200001", "Brown", "Ava", "", "2", "abrown1", "Harbor-2201", "", "", "A"],
        ["301", "T-200002", "Garcia", "Leo", "", "4", "lgarcia2", "Harbor-2202", "", "", "A"],
        ["302", "T-200003", "Ito", "Yuki", "", "13", "yito3", "Harbor-2203", "", "", "A"],
        ["390", "T-200004", "Moreau", "Chloe", "", "9", "cmoreau4", "Harbor-2204", "", "", "A"],
        ["302", "T-200005", "Silva", "Rui", "", "10", "rsilva5", "", "", "", "A"],
        ["302", "T-200006", "Adeyemi", "Tola", "", "11", "tadeyemi6", "Harbor-2206",
         "not-an-email", "", "A"],
        ["301", "T-200007", "Novak", "Petra", "", "5", "pnovak7", "Harbor-2207", "", "", "A"],
        ["301", "T-200008", "Larsen", "Nils", "", "5", "nlarsen8", "Harbor-2208", "", "", "A"],
        ["302", "T-200009", "Kim", "Min", "", "12", "mkim9", "Harbor-2209", "", "", "A"],
        ["301", "T-200010", "Rossi", "Gia", "", "1", "grossi10", "Harbor-2210", "", "", "D"],
    ]  # fmt: skip
    return _csv(rows)


def sample_held() -> bytes:
    """D003: the SIS's end-of-year export marks 32 of its 40 active students D (80%, limit
    10%, at least 25 students): the change guard holds it; nothing is applied until an
    operator decides."""
    rows = [
        [school, sid, last, first, "", grade, username, "", "", "", "D" if i < 32 else "A"]
        for i, (sid, school, last, first, grade, username) in enumerate(_D003_STUDENTS)
    ]
    return _csv(rows)


def sample_baseline() -> bytes:
    """D003's upload of last night: every student as loaded (nothing changes). The change
    guard holds nothing before a district's first applied upload: this one is it."""
    rows = [
        [school, sid, last, first, "", grade, username, "", "", "", "A"]
        for sid, school, last, first, grade, username in _D003_STUDENTS
    ]
    return _csv(rows)


def apply_baseline(conn: psycopg.Connection, secret: str, now: dt.datetime) -> None:
    """Process D003's upload of last night (`eams process`'s code), once."""
    from eams_pipeline.core.names import make_upload_key
    from eams_pipeline.core.passwords import Argon2Settings, PasswordHasher
    from eams_pipeline.services.process import Engine, Upload, process_upload

    exists = conn.execute(
        "SELECT 1 FROM uploads JOIN districts USING (district_id) WHERE code = 'D003'"
    ).fetchone()
    conn.rollback()
    if exists:
        return
    received = now - dt.timedelta(days=1)
    upload = Upload(
        district="D003",
        data=sample_baseline(),
        file_name="students.csv",
        key=make_upload_key("D003", received),
        received_at=received,
    )
    engine = Engine(secret=secret.encode("utf-8"), hasher=PasswordHasher(Argon2Settings()))
    process_upload(conn, upload, engine)
    conn.commit()


def drop_sample(directory: Path, data: bytes) -> bool:
    """Upload like WinSCP does: write ``students.csv.filepart``, then rename it."""
    incoming = directory / "incoming"
    target = incoming / "students.csv"
    if target.exists():
        return False
    partial = incoming / "students.csv.filepart"
    partial.write_bytes(data)
    partial.rename(target)
    return True


# -- running -------------------------------------------------------------------------------


def run_demo(options: DemoOptions, echo: Echo = print) -> int:
    root = repo_root()
    state = options.state_dir if options.state_dir.is_absolute() else root / options.state_dir
    with demo_lock(state):
        return _run_locked(options, state, root, echo)


def _run_locked(options: DemoOptions, state: Path, root: Path, echo: Echo) -> int:
    if options.reset:
        echo(f"reset: dropping the demo databases and emptying {state}")
        drop_databases(options.database_url)
        clear_state(state)
    os.chmod(state, 0o700)
    secret_env = load_or_create_secrets(state)

    echo(f"database: {options.database_url} (and Dagster's storage in *{DAGSTER_DB_SUFFIX})")
    if not prepare_databases(options.database_url):
        echo(reuse_note(options.database_url, state))

    stop = threading.Event()
    previous = {sig: signal.signal(sig, _handler(stop)) for sig in (signal.SIGINT, signal.SIGTERM)}
    sftp = LoopbackSftpServer(
        state / "sftp",
        {USERS[code]: secret_env[f"EAMS_SFTP_{code}_PASSWORD"] for code in USERS},
        host_key_path=state / "sftp_host_ed25519_key",
        port=_port_or_free(options.sftp_port),
    )
    smtp = LoopbackSmtpServer(state / "mail", port=_port_or_free(options.smtp_port))
    dagster: subprocess.Popen | None = None
    try:
        sftp.start()
        smtp.start()
        for user in USERS.values():
            for sub in DISTRICT_DIRS:
                (sftp.user_dir(user) / sub).mkdir(parents=True, exist_ok=True)

        setup_file = state / "setup.yaml"
        setup_file.write_text(yaml.safe_dump(master_data(sftp), sort_keys=False))
        with psycopg.connect(options.database_url) as conn:
            load_master_data(conn, parse_master_data(setup_file.read_text()))
            conn.commit()
            apply_baseline(conn, secret_env["EAMS_SECRET_KEY"], dt.datetime.now(dt.UTC))

        dropped = []
        if options.samples:
            samples = {
                "D001": sample_clean(),
                "D002": sample_with_errors(),
                "D003": sample_held(),
            }
            dropped = [
                code
                for code, data in samples.items()
                if drop_sample(sftp.user_dir(USERS[code]), data)
            ]

        env = demo_environment(options, state, secret_env, sftp, smtp)
        env_file = state / "env.sh"
        write_env_file(env_file, env)
        ui_port = _free_port(options.ui_port)
        log_file = state / "dagster.log"
        with log_file.open("ab") as log:
            dagster = subprocess.Popen(
                [
                    sys.executable, "-m", "dagster", "dev",
                    "-w", str(root / "workspace.yaml"),
                    "-h", HOST, "-p", str(ui_port),
                ],
                cwd=root,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _print_guide(echo, state, ui_port, sftp, smtp, dropped, env_file, log_file, options)
        _watch(stop, dagster, smtp, echo)
    finally:
        echo("stopping: Dagster, the SFTP and the SMTP server ...")
        if dagster is not None:
            stop_process_group(dagster)
        smtp.stop()
        sftp.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        echo("stopped.")
    return 0 if stop.is_set() else 1


def _handler(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return handle


def demo_environment(
    options: DemoOptions,
    state: Path,
    secret_env: dict[str, str],
    sftp: LoopbackSftpServer,
    smtp: LoopbackSmtpServer,
) -> dict[str, str]:
    pg = conninfo_to_dict(dagster_database_url(options.database_url))
    dagster_home = state / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(repo_root() / "dagster.yaml", dagster_home / "dagster.yaml")
    return {
        **secret_env,
        "EAMS_DATABASE_URL": options.database_url,
        "EAMS_ARCHIVE_DIR": str(state / "archive"),
        "EAMS_SENSOR_INTERVAL_SECONDS": str(options.interval_seconds),
        "EAMS_SETTLE_SECONDS": str(options.settle_seconds),
        "EAMS_SMTP_HOST": HOST,
        "EAMS_SMTP_PORT": str(smtp.port),
        "EAMS_SMTP_SECURITY": "none",
        "EAMS_MAIL_FROM": "eams-noreply@eams.example.com",
        "EAMS_OPERATOR_EMAILS": OPERATORS,
        "DAGSTER_HOME": str(dagster_home),
        "EAMS_DAGSTER_PG_HOST": str(pg.get("host") or HOST),
        "EAMS_DAGSTER_PG_PORT": str(pg.get("port") or 5432),
        "EAMS_DAGSTER_PG_USER": str(pg.get("user") or "postgres"),
        "EAMS_DAGSTER_PG_PASSWORD": str(pg.get("password") or ""),
        "EAMS_DAGSTER_PG_DB": str(pg["dbname"]),
    }


def write_env_file(path: Path, env: dict[str, str], bin_dir: Path | None = None) -> None:
    """`source` it to use the demo's database and settings, with the project's `eams` (the
    interpreter's bin directory, e.g. .venv/bin) first on PATH."""
    bin_dir = bin_dir or Path(sys.executable).parent
    lines = ["# source this file to use the demo's database and settings (holds secrets)"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines += [f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"']
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _print_guide(
    echo: Echo,
    state: Path,
    ui_port: int,
    sftp: LoopbackSftpServer,
    smtp: LoopbackSmtpServer,
    dropped: list[str],
    env_file: Path,
    log_file: Path,
    options: DemoOptions,
) -> None:
    url = f"http://{HOST}:{ui_port}"
    sftp_dir = state / "sftp"
    echo("")
    echo("eAMS demo is starting (Dagster takes ~20 s; runs follow within a minute).")
    echo(f"  Dagster UI        {url}")
    echo(f"    runs            {url}/runs")
    echo(f"    error reports   {url}/assets/error_report  (metadata: counts, codes, preview)")
    echo(f"    change reports  {url}/assets/change_report  (metadata: lines per change)")
    echo(f"    sensors         {url}/automation")
    echo(f"  SFTP server       sftp -P {sftp.port} d001@{HOST}   (passwords: {state}/secrets.json)")
    echo(
        f"    district dirs   {sftp_dir}/d001, d002, d003 (incoming/ errors/ processed/ "
        "check/ reports/)"
    )
    echo(
        f"  held for review   D003's upload: {url}/assets/upload_outcome (check change_guard);"
        " eams uploads list --district D003, then approve or discard"
    )
    echo(f"  mail folder       {smtp.maildir}  (SMTP on {HOST}:{smtp.port})")
    echo(f"  archive           {state}/archive (encrypted)")
    echo(f"  Dagster log       {log_file}")
    echo(f"  environment       source {env_file}   (then: eams export students --district D001)")
    if dropped:
        echo(f"  sample uploads    dropped into incoming/ of {', '.join(dropped)}")
    echo(
        f"  sensors tick every {options.interval_seconds}s; a file is taken after "
        f"{options.settle_seconds}s unchanged. Drop another students.csv into an incoming/,"
        " or into a check/ to have it checked only (report in reports/, nothing applied)."
    )
    echo("Press Ctrl-C to stop everything.")
    echo("")


def _watch(
    stop: threading.Event, dagster: subprocess.Popen, smtp: LoopbackSmtpServer, echo: Echo
) -> None:
    seen = 0
    while not stop.wait(1.0):
        for mail in smtp.received[seen:]:
            echo(f"mail to {', '.join(mail.rcpt_tos)}: {mail.message['Subject']}  [{mail.path}]")
        seen = len(smtp.received)
        if dagster.poll() is not None:
            echo(f"dagster dev exited with code {dagster.returncode}; see the Dagster log")
            return


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to ``dagster dev`` (it shuts its services down), then its whole group."""
    pgid = process.pid  # start_new_session: the group is the process's own
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_STOP_TIMEOUT_SECONDS)
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.2)
        if not group_alive(pgid):
            break
    if process.poll() is None:
        process.kill()
        process.wait()


def group_alive(pgid: int) -> bool:
    """Is any process of the group still there?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
