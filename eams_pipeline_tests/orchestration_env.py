"""A whole pipeline for orchestration tests: a migrated database with two districts whose
SFTP accounts live on the real loopback SFTP server, the loopback SMTP server, an encrypted
archive, and the code location built for those districts with a controllable clock.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eams_pipeline.core.names import DISTRICT_DIRS, UploadRef
from eams_pipeline.devtools.sftp_server import LoopbackSftpServer
from eams_pipeline.devtools.smtp_server import LoopbackSmtpServer
from eams_pipeline.io.archive import generate_key
from eams_pipeline.orchestration.check_job import CHECK_JOB_NAME
from eams_pipeline.orchestration.code_location import build_definitions
from eams_pipeline.orchestration.district_sensors import sensor_name
from eams_pipeline.orchestration.jobs import UPLOAD_JOB_NAME
from eams_pipeline.orchestration.partitions import (
    DISTRICTS as DISTRICT_PARTITIONS,
)
from eams_pipeline.orchestration.partitions import (
    FILE_MTIME_TAG,
    FILE_SIZE_TAG,
    UPLOAD_KEY_TAG,
    upload_run_config,
    upload_tags,
)
from eams_pipeline.orchestration.reprocess_job import REPROCESS_JOB_NAME, build_reprocess_job
from eams_pipeline.orchestration.resources import (
    ArchiveResource,
    DatabaseResource,
    EngineResource,
    SftpResource,
    SmtpResource,
)
from eams_pipeline.orchestration.upload_request_sensor import build_upload_requests_sensor
from eams_pipeline_tests import builders
from eams_pipeline_tests.admin_db import ADMIN_URL
from eams_pipeline_tests.fixtures_servers import SFTP_PASSWORDS

ROOT = Path(__file__).resolve().parents[1]

T0 = dt.datetime(2026, 1, 14, 8, 0, 0, tzinfo=dt.UTC)
DISTRICTS = {"D001": "d001", "D002": "d002"}  # district code -> SFTP user


def password_env(user: str) -> str:
    return f"EAMS_TEST_SFTP_{user.upper()}_PASSWORD"


def district(code: str, server: LoopbackSftpServer, **sftp: Any) -> dict[str, Any]:
    doc = builders.district_doc(code=code)
    doc["contacts"] = [f"sis-admin@{code.lower()}.example.org", f"it@{code.lower()}.example.org"]
    user = DISTRICTS[code]
    doc["sftp"] = {
        "host": "127.0.0.1",
        "port": server.port,
        "username": user,
        "password_env": password_env(user),
        "host_key": server.host_key_line,
        "root": "/",
        **sftp,
    }
    return doc


@dataclass
class Clock:
    now: dt.datetime = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


@dataclass
class Pipeline:
    conn: psycopg.Connection
    db_url: str
    sftp: LoopbackSftpServer
    smtp: LoopbackSmtpServer
    archive_dir: Path
    settle: float = 30
    clock: Clock = field(default_factory=Clock)
    dispatch_cursor: str | None = None  # the upload requests sensor's
    last_dispatch: dg.SensorResult | dg.SkipReason | None = None
    sftp_resource: SftpResource = field(
        default_factory=lambda: SftpResource(
            connect_timeout_seconds=5,
            banner_timeout_seconds=5,
            auth_timeout_seconds=5,
            operation_timeout_seconds=10,
            connect_attempts=1,
            retry_wait_seconds=0,
        )
    )

    def __post_init__(self) -> None:
        for user, password in SFTP_PASSWORDS.items():
            os.environ[password_env(user)] = password
            for sub in DISTRICT_DIRS:
                (self.sftp.user_dir(user) / sub).mkdir(parents=True, exist_ok=True)
        builders.load(self.conn, *(district(code, self.sftp) for code in DISTRICTS))
        self.conn.commit()

    # -- the code location ------------------------------------------------------------------

    def resources(self, **overrides: object) -> dict[str, object]:
        resources: dict[str, object] = {
            "db": DatabaseResource(url=self.db_url),
            "sftp": self.sftp_resource,
            "smtp": SmtpResource(port=self.smtp.port),
            "archive": ArchiveResource(directory=str(self.archive_dir)),
            "engine": EngineResource(),
        }
        resources.update(overrides)
        return resources

    def defs(self, **resource_overrides: object) -> dg.Definitions:
        return build_definitions(
            list(DISTRICTS),
            resources=self.resources(**resource_overrides),
            interval_seconds=1,
            settle=self.settle,
            clock=self.clock,
        )

    # -- the district's side of SFTP ---------------------------------------------------------

    def user_dir(self, code: str) -> Path:
        return self.sftp.user_dir(DISTRICTS[code])

    def upload(self, code: str, data: bytes, name: str = "students.csv", mtime: int = 0) -> Path:
        path = self.user_dir(code) / "incoming" / name
        path.write_bytes(data)
        if mtime:
            os.utime(path, (mtime, mtime))
        return path

    def check(self, code: str, data: bytes, mtime: int = 0) -> Path:
        """Drop a students.csv into the district's check/ (a check drop)."""
        path = self.user_dir(code) / "check" / "students.csv"
        path.write_bytes(data)
        if mtime:
            os.utime(path, (mtime, mtime))
        return path

    def files(self, code: str, sub: str) -> list[str]:
        return sorted(p.name for p in (self.user_dir(code) / sub).iterdir())

    # -- ticks and runs ----------------------------------------------------------------------

    def tick(
        self, instance: dg.DagsterInstance, code: str, cursor: str | None, **resources: object
    ) -> dg.SensorResult | dg.SkipReason:
        defs = self.defs(**resources)
        sensor = defs.resolve_sensor_def(sensor_name(code))
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            sensor_name=sensor.name,
            resources=self.resources(**resources),
        )
        return sensor(context)

    def run_upload(
        self,
        instance: dg.DagsterInstance,
        key: str,
        *,
        stat: tuple[int, int] | None = None,
        ops: dict[str, Any] | None = None,
        asset_selection: list[dg.AssetKey] | None = None,
        raise_on_error: bool = True,
        **resources: object,
    ) -> dg.ExecuteInProcessResult:
        """Run the upload job for one upload, as the sensor's run (``stat``) or a re-run:
        its district's partition, its key as run config and tag (``ops``: the steps' config)."""
        ref = UploadRef.parse(key)
        if not instance.has_dynamic_partition(DISTRICT_PARTITIONS.name, ref.district):
            instance.add_dynamic_partitions(DISTRICT_PARTITIONS.name, [ref.district])
        tags = upload_tags(ref)
        if stat is not None:
            tags |= {FILE_SIZE_TAG: str(stat[0]), FILE_MTIME_TAG: str(stat[1])}
        job = self.defs(**resources).resolve_job_def(UPLOAD_JOB_NAME)
        return job.execute_in_process(
            partition_key=ref.district,
            instance=instance,
            tags=tags,
            run_config=upload_run_config(key, ops),
            asset_selection=asset_selection,
            raise_on_error=raise_on_error,
        )

    def request(self, result: dg.SensorResult | dg.SkipReason) -> dg.RunRequest:
        """The run of the upload a district sensor's tick requested: the tick recorded the
        request, the upload requests sensor's next tick asks for exactly that one run."""
        assert isinstance(result, dg.SensorResult), result
        assert not result.run_requests, result  # a district sensor targets no job
        assert "requested upload " in str(result.skip_reason), result
        dispatched = self.dispatch()
        assert isinstance(dispatched, dg.SensorResult), dispatched
        assert len(dispatched.run_requests) == 1, dispatched
        return dispatched.run_requests[0]

    def dispatch(
        self, cursor: str | None = None, *, advance: bool = True, **kwargs: object
    ) -> dg.SensorResult | dg.SkipReason:
        """One tick of the upload requests sensor, after the requests it handed out before
        (or after ``cursor``); ``kwargs``: build_upload_requests_sensor's."""
        job = self.defs().resolve_job_def(UPLOAD_JOB_NAME)
        sensor = build_upload_requests_sensor(job, sensor_name_of=sensor_name, **kwargs)  # type: ignore[arg-type]
        context = dg.build_sensor_context(
            cursor=cursor if cursor is not None else self.dispatch_cursor,
            resources={"db": self.resources()["db"]},
        )
        result = sensor(context)
        self.last_dispatch = result
        if advance and isinstance(result, dg.SensorResult) and result.cursor:
            self.dispatch_cursor = result.cursor
        return result

    def launch(
        self, instance: dg.DagsterInstance, request: dg.RunRequest, **resources: object
    ) -> dg.ExecuteInProcessResult:
        """What the daemon does with a run request of upload_job: its partition (added if
        missing), run config and tags, as given (a request of check_upload: its run config
        and tags)."""
        if request.job_name == CHECK_JOB_NAME:
            return (
                self.defs(**resources)
                .resolve_job_def(CHECK_JOB_NAME)
                .execute_in_process(
                    instance=instance,
                    run_config=request.run_config,
                    tags=request.tags,
                    raise_on_error=False,
                )
            )
        if not instance.has_dynamic_partition(DISTRICT_PARTITIONS.name, request.partition_key):
            instance.add_dynamic_partitions(DISTRICT_PARTITIONS.name, [request.partition_key])
        job = self.defs(**resources).resolve_job_def(UPLOAD_JOB_NAME)
        return job.execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
        )

    def reprocess(
        self, instance: dg.DagsterInstance, **config: object
    ) -> dg.ExecuteInProcessResult:
        """reprocess_uploads launched with this config (its clock: the pipeline's)."""
        job = build_reprocess_job(clock=self.clock)
        defs = dg.Definitions(jobs=[job], resources=self.resources())
        return defs.resolve_job_def(REPROCESS_JOB_NAME).execute_in_process(
            instance=instance,
            run_config={"ops": {"request_reprocessing": {"config": config}}},
            raise_on_error=False,
        )

    def sensor_run(
        self, instance: dg.DagsterInstance, code: str, data: bytes
    ) -> tuple[dg.RunRequest, dg.ExecuteInProcessResult]:
        """Upload, let it settle over two ticks, run what the sensor requested."""
        self.upload(code, data)
        first = self.tick(instance, code, None)
        assert isinstance(first, dg.SensorResult) and not first.run_requests
        self.clock.advance(self.settle)
        request = self.request(self.tick(instance, code, first.cursor))
        key = upload_key(request)
        stat = (int(request.tags[FILE_SIZE_TAG]), int(request.tags[FILE_MTIME_TAG]))
        result = self.run_upload(instance, key, stat=stat)
        return request, result


def upload_key(request: dg.RunRequest) -> str:
    """The upload a run request is for (checked: its tag, its run config, its partition)."""
    key = request.tags[UPLOAD_KEY_TAG]
    assert request.run_config["resources"] == upload_run_config(key)["resources"], request
    assert request.partition_key == UploadRef.parse(key).district
    return key


def generate_archive_key() -> str:
    return generate_key()


# -- fixtures (registered in conftest.py) ---------------------------------------------------

OPERATORS = "ops@eams.example.com, oncall@eams.example.com"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway Dagster instance (in-process runs, sensors evaluated directly)."""
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def pipeline(
    conn: psycopg.Connection,
    db_url: str,
    sftp_server: LoopbackSftpServer,
    smtp_server: LoopbackSmtpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Pipeline:
    """The whole pipeline of this module; EAMS_ARCHIVE_KEY and EAMS_OPERATOR_EMAILS set."""
    monkeypatch.setenv("EAMS_ARCHIVE_KEY", generate_key())
    monkeypatch.setenv("EAMS_OPERATOR_EMAILS", OPERATORS)
    for user in DISTRICTS.values():
        monkeypatch.setenv(password_env(user), "replaced by the pipeline")  # restored after
    return Pipeline(conn, db_url, sftp_server, smtp_server, tmp_path / "archive")


@dataclass(frozen=True)
class DagsterStorage:
    """A database for Dagster's storage and a $DAGSTER_HOME with the shipped dagster.yaml."""

    url: str
    home: Path

    @property
    def env(self) -> dict[str, str]:
        """EAMS_DAGSTER_PG_* (what dagster.yaml reads) and DAGSTER_HOME."""
        params = conninfo_to_dict(self.url)
        return {
            "EAMS_DAGSTER_PG_HOST": str(params.get("host", "127.0.0.1")),
            "EAMS_DAGSTER_PG_PORT": str(params.get("port", "5432")),
            "EAMS_DAGSTER_PG_USER": str(params.get("user", "postgres")),
            "EAMS_DAGSTER_PG_PASSWORD": str(params.get("password", "")),
            "EAMS_DAGSTER_PG_DB": str(params["dbname"]),
            "DAGSTER_HOME": str(self.home),
        }

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)


@contextmanager
def dagster_storage(home: Path) -> Iterator[DagsterStorage]:
    """An empty database for Dagster's storage, dropped afterwards."""
    name = f"eams_test_dagster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    try:
        yield DagsterStorage(make_conninfo(ADMIN_URL, dbname=name), home)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def dagster_pg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty database for Dagster's storage; EAMS_DAGSTER_PG_* point at it."""
    with dagster_storage(tmp_path / "dagster_pg_home") as storage:
        for name, value in storage.env.items():
            if name != "DAGSTER_HOME":
                monkeypatch.setenv(name, value)
        yield storage.url


@pytest.fixture(scope="module")
def module_dagster_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterStorage]:
    """One Dagster storage for a module's tests, its schema created once (about 2 s saved
    per test). Tests sharing it must use partition keys of their own (see Clock)."""
    with dagster_storage(tmp_path_factory.mktemp("dagster_home")) as storage:
        with pytest.MonkeyPatch.context() as mp:
            storage.use(mp)
            with dg.DagsterInstance.get():
                pass
        yield storage


# -- what the orchestration tests share ------------------------------------------------

# values that must never reach an email, the archive in clear or an operator alert
SECRET_PASSWORD = "Hunter2-Zq81!"
SID_A, SID_B, SID_C = "STU-77810", "STU-77811", "STU-77812"
LAST_NAME = "Zyxwvutson"


def clean_file(grade: str = "5") -> bytes:
    return builders.csv_bytes(
        [
            builders.row(SID_A, last_name=LAST_NAME, password=SECRET_PASSWORD, grade=grade),
            builders.row(SID_B, "X", password=SECRET_PASSWORD),
        ]
    )


def file_with_errors() -> bytes:
    return builders.csv_bytes(
        [
            builders.row(SID_A, last_name=LAST_NAME, password=SECRET_PASSWORD),
            builders.row(SID_B, grade="13", password=SECRET_PASSWORD),  # INVALID_GRADE
            builders.row(SID_C, school_code="999", password=SECRET_PASSWORD),  # SCHOOL_NOT_FOUND
        ]
    )


def materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    [event] = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    metadata = event.step_materialization_data.materialization.metadata
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def assert_no_student_data(text: str) -> None:
    for value in (SECRET_PASSWORD, SID_A, SID_B, SID_C, LAST_NAME):
        assert value not in text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
