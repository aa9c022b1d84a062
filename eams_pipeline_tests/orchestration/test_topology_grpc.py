"""The production topology without containers: separate processes, as in deploy/.

- the code location served by ``dagster code-server start`` (gRPC) in its own process,
  holding the eAMS settings and secrets; it evaluates the sensors and starts the runs;
- ``dagster-daemon run`` and ``dagster-webserver`` as two more processes, each with only
  DAGSTER_HOME (the shipped dagster.yaml) and Dagster's PostgreSQL storage, and a
  workspace.yaml that points at the gRPC server (``grpc_server:``) like
  deploy/docker/workspace.yaml does;
- the real loopback SFTP and SMTP servers of the tests, a migrated MY Access database with
  two districts of which the location serves one shard (EAMS_DISTRICT_SHARD).

A students.csv with one row error dropped into the district's incoming/ must come out as
the error file in errors/, the district's email and the upload row in the database; the
webserver must see the location loaded over gRPC and the run. Every process is started in
its own session and its whole process group is killed at teardown, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from eams_pipeline.db.connection import create_database_if_missing
from eams_pipeline.devtools.demo import (
    DemoOptions,
    dagster_database_url,
    demo_environment,
    drop_sample,
    stop_process_group,
)
from eams_pipeline.devtools.sftp_server import LoopbackSftpServer
from eams_pipeline.devtools.smtp_server import LoopbackSmtpServer
from eams_pipeline.io.archive import generate_key
from eams_pipeline.orchestration.partitions import DISTRICT_TAG, UPLOAD_KEY_TAG
from eams_pipeline.orchestration.sharding import shard_of
from eams_pipeline_tests import builders
from eams_pipeline_tests.admin_db import ADMIN_URL
from eams_pipeline_tests.fixtures_servers import SFTP_PASSWORDS

HOST = "127.0.0.1"
LOCATION = "eams_pipeline"
SHARDS = 2
# district code -> SFTP user: D001 and D003 fall in different shards of 2 (sharding tests)
DISTRICTS = {"D001": "d001", "D003": "d002"}
SERVED = "D001"
BIN = Path(sys.executable).parent
BOOT_TIMEOUT_SECONDS = 90
FLOW_TIMEOUT_SECONDS = 90
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float, procs: Processes) -> T:
    """Poll ``probe`` until it returns something truthy; fail early if a process died."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            value = probe()
        except Exception as exc:  # the server is not up yet, the row not there yet, ...
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(
        f"timed out after {timeout:g}s waiting for {what} (last error: {last_error!r})"
        + procs.tails()
    )


@dataclass
class Processes:
    """Child processes, each the leader of its own session (so of its process group)."""

    log_dir: Path
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            self.started[name] = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.started.items() if p.poll() is not None}
        if dead:
            pytest.fail(f"exited early: {dead}" + self.tails())

    def tails(self, lines: int = 25) -> str:
        out = []
        for name in self.started:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"\n--- {name} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
        return "".join(out)

    def stop_all(self) -> None:
        # SIGTERM every group at once, then make sure each is gone (SIGKILL if need be)
        for process in self.started.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started.values():
            stop_process_group(process)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path / "logs")
    procs.log_dir.mkdir()
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def dagster_storage(db_url: str) -> Iterator[str]:
    """Dagster's storage database, named as the demo names it (``<database>_dagster``)."""
    url = dagster_database_url(db_url)
    create_database_if_missing(url)
    yield url
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(conninfo_to_dict(url)["dbname"])
            )
        )


def _password_env(user: str) -> str:
    return f"EAMS_TEST_SFTP_{user.upper()}_PASSWORD"


def _district(code: str, user: str, sftp: LoopbackSftpServer) -> dict[str, Any]:
    doc = builders.district_doc(code=code)
    doc["contacts"] = [f"sis-admin@{code.lower()}.example.org"]
    doc["sftp"] = {
        "host": HOST,
        "port": sftp.port,
        "username": user,
        "password_env": _password_env(user),
        "host_key": sftp.host_key_line,
        "root": "/",
    }
    return doc


def _graphql(port: int, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{HOST}:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.load(response)
    assert "errors" not in body, body
    return body["data"]


def _grpc_location_loaded(port: int) -> bool:
    """The code server answers and its code is loaded (the proxy may answer before)."""
    from dagster._grpc.client import DagsterGrpcClient  # the client `dagster api` uses

    with socket.create_connection((HOST, port), timeout=2):
        pass  # listening (else the gRPC client would log every refused attempt)
    client = DagsterGrpcClient(port=port, host=HOST)
    if client.health_check_query() != "SERVING":
        return False
    return "eams_pipeline" in client.list_repositories()


LOCATION_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus displayMetadata { key value }
    locationOrLoadError { __typename
      ... on RepositoryLocation { repositories { name sensors { name } } }
      ... on PythonError { message } } } } } }"""

DAEMON_QUERY = """{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"""

RUNS_QUERY = (
    '{ runsOrError(filter: {tags: [{key: "' + DISTRICT_TAG + '", value: "' + SERVED + '"}]}) {'
    " ... on Runs { results { runId status tags { key value } } } } }"
)

PARTITIONS_QUERY = (
    '{ assetNodeOrError(assetKey: {path: ["upload_outcome"]}) {'
    " ... on AssetNode { partitionKeysByDimension { partitionKeys } } } }"
)


def test_upload_flows_through_code_server_daemon_and_webserver(
    conn: psycopg.Connection,
    db_url: str,
    dagster_storage: str,
    sftp_server: LoopbackSftpServer,
    smtp_server: LoopbackSmtpServer,
    processes: Processes,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    # -- the MY Access database, the SFTP accounts ------------------------------------------
    builders.load(conn, *(_district(c, u, sftp_server) for c, u in DISTRICTS.items()))
    conn.commit()
    for user in DISTRICTS.values():
        for sub in ("incoming", "errors", "processed"):
            (sftp_server.user_dir(user) / sub).mkdir(parents=True, exist_ok=True)
    shard = shard_of(SERVED, SHARDS)
    assert {shard_of(c, SHARDS) for c in DISTRICTS} == {0, 1}, "one district per shard"

    # -- environments: the demo's, split between the code location and Dagster's services ---
    secrets = {
        "EAMS_SECRET_KEY": os.environ["EAMS_SECRET_KEY"],
        "EAMS_ARCHIVE_KEY": generate_key(),
        **{_password_env(u): SFTP_PASSWORDS[u] for u in DISTRICTS.values()},
    }
    options = DemoOptions(
        state_dir=tmp_path / "state", database_url=db_url, interval_seconds=1, settle_seconds=1
    )
    options.state_dir.mkdir()
    demo_env = demo_environment(options, options.state_dir, secrets, sftp_server, smtp_server)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EAMS_", "DAGSTER_"))}
    dagster_keys = {"DAGSTER_HOME"} | {k for k in demo_env if k.startswith("EAMS_DAGSTER_PG_")}
    services_env = clean | {k: demo_env[k] for k in dagster_keys}
    location_env = (
        clean
        | demo_env
        | {k: v for k, v in os.environ.items() if k.startswith("EAMS_ARGON2_")}
        | {"EAMS_DISTRICT_SHARD": f"{shard}/{SHARDS}", "EAMS_OPERATOR_EMAILS": ""}
    )
    assert "EAMS_DATABASE_URL" not in services_env and "EAMS_SECRET_KEY" not in services_env

    grpc_port, ui_port = _free_port(), _free_port()
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {"load_from": [{"grpc_server": {"host": HOST, "port": grpc_port,
                                            "location_name": LOCATION}}]}
        )
    )  # fmt: skip

    # -- the three processes -----------------------------------------------------------------
    processes.start(
        "code-server",
        [str(BIN / "dagster"), "code-server", "start", "-m", "eams_pipeline.definitions",
         "--host", HOST, "--port", str(grpc_port), "--location-name", LOCATION,
         "--use-python-environment-entry-point"],
        location_env, tmp_path,
    )  # fmt: skip
    _wait_for("the code server", lambda: _grpc_location_loaded(grpc_port),
              BOOT_TIMEOUT_SECONDS, processes)  # fmt: skip
    processes.start(
        "daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
        services_env, tmp_path,
    )  # fmt: skip
    processes.start(
        "webserver",
        [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", HOST, "-p", str(ui_port)],
        services_env, tmp_path,
    )  # fmt: skip

    # -- the webserver sees the location loaded from gRPC, with this shard's sensors only ----
    def server_info() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{HOST}:{ui_port}/server_info", timeout=5) as r:
            return json.load(r)

    info = _wait_for("the webserver", server_info, BOOT_TIMEOUT_SECONDS, processes)
    assert "dagster_webserver_version" in info or "dagit_version" in info, info
    entries = _graphql(ui_port, LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
    assert [e["name"] for e in entries] == [LOCATION]
    entry = entries[0]
    assert entry["loadStatus"] == "LOADED", entry
    metadata = {m["key"]: m["value"] for m in entry["displayMetadata"]}
    assert metadata.get("host") == HOST and metadata.get("port") == str(grpc_port), metadata
    (repository,) = entry["locationOrLoadError"]["repositories"]
    assert {s["name"] for s in repository["sensors"]} == {
        f"sftp_{SERVED}",
        "eams_operator_alerts",
        "eams_decisions",
        "eams_district_partitions",
        "eams_upload_requests",
    }

    # -- the daemon is up (its heartbeats are in the shared storage) -------------------------
    def sensor_daemon_healthy() -> bool:
        statuses = _graphql(ui_port, DAEMON_QUERY)["instance"]["daemonHealth"]
        return any(
            s["daemonType"] == "SENSOR" and s["healthy"] for s in statuses["allDaemonStatuses"]
        )

    _wait_for("the daemon's sensor heartbeat", sensor_daemon_healthy, BOOT_TIMEOUT_SECONDS,
              processes)  # fmt: skip

    # -- the district uploads a file with one row error (as WinSCP does) ---------------------
    data = builders.csv_bytes([builders.row("S1"), builders.row("S2", grade="13")])
    user_dir = sftp_server.user_dir(DISTRICTS[SERVED])
    assert drop_sample(user_dir, data)
    # the other shard's district is not watched by this location
    assert drop_sample(sftp_server.user_dir(DISTRICTS["D003"]), data)

    def error_files() -> list[Path]:
        return sorted((user_dir / "errors").glob("students_errors_*.csv"))

    (error_file,) = _wait_for("the error file", error_files, FLOW_TIMEOUT_SECONDS, processes)
    assert b"INVALID_GRADE" in error_file.read_bytes()
    mail = _wait_for("the district's email", lambda: smtp_server.messages,
                     FLOW_TIMEOUT_SECONDS, processes)[0]  # fmt: skip
    assert "sis-admin@d001.example.org" in mail["To"]
    assert "partially" in mail["Subject"].lower(), mail["Subject"]

    with psycopg.connect(db_url) as check:
        upload = check.execute(
            """SELECT u.status, u.rows, u.added, u.errors, u.upload_key
               FROM uploads u JOIN districts d USING (district_id) WHERE d.code = %s""",
            (SERVED,),
        ).fetchall()
    assert [row[:4] for row in upload] == [("partially_processed", 2, 1, 1)]
    assert error_file.name == f"students_errors_{_upload_id(db_url, upload[0][4])}.csv"
    assert list((user_dir / "incoming").iterdir()) == []

    # -- the run, as the webserver shows it ---------------------------------------------------
    def finished_runs() -> list[dict[str, Any]]:
        runs = _graphql(ui_port, RUNS_QUERY)["runsOrError"]["results"]
        return runs if runs and all(r["status"] == "SUCCESS" for r in runs) else []

    (run,) = _wait_for("the run to succeed", finished_runs, FLOW_TIMEOUT_SECONDS, processes)
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags[UPLOAD_KEY_TAG] == upload[0][4] and tags[DISTRICT_TAG] == SERVED
    assert tags["dagster/partition"] == SERVED  # the upload assets are partitioned by district
    assert tags["dagster/code_location"] == LOCATION
    # the partitions are the districts this location serves (the other shard's is not there)
    node = _graphql(ui_port, PARTITIONS_QUERY)["assetNodeOrError"]
    assert node["partitionKeysByDimension"][0]["partitionKeys"] == [SERVED]
    # requested by the district's sensor, started by the location's upload requests sensor
    assert tags.get("eams/requested_by") == f"sftp_{SERVED}"
    assert tags.get("dagster/sensor_name") == "eams_upload_requests"

    # D003 belongs to the other shard: untouched, no run, no mail for it
    assert (sftp_server.user_dir(DISTRICTS["D003"]) / "incoming" / "students.csv").exists()
    assert len(smtp_server.messages) == 1
    processes.check_alive()
    print(f"topology test flow took {time.monotonic() - started:.1f}s")


def _upload_id(db_url: str, key: str) -> int:
    with psycopg.connect(db_url) as check:
        row = check.execute("SELECT upload_id FROM uploads WHERE upload_key = %s", (key,))
        return row.fetchone()[0]
