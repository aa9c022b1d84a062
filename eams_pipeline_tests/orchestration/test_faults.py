"""Faults on the Dagster path: the run worker killed, SFTP and SMTP servers
going away, PostgreSQL restarting. Real servers on 127.0.0.1 and the shipped dagster.yaml
(PostgreSQL run storage, run retries). Every test ends with the same guarantees:

- the upload applied exactly once (one uploads row, final status, students and
  ``orders.used`` consistent);
- the district emailed exactly once (one window is at least once by choice: a worker killed
  after the relay accepted the email, before the step recorded it, see the last kill test);
- the error file published exactly once (one file in errors/, nothing else left there).

What the daemons do is done by the test, as they would: run monitoring reports a run whose
worker died as failed (``report_run_failed``); the retry daemon re-executes a failed run from
its failure, with ``dagster/retry_number``, while the instance tags it ``dagster/will_retry``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import dagster as dg
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from eams_pipeline.db.uploads import get_upload
from eams_pipeline.devtools.sftp_server import LoopbackSftpServer
from eams_pipeline.devtools.smtp_server import LoopbackSmtpServer
from eams_pipeline.orchestration import assets
from eams_pipeline.orchestration.failure_sensor import WILL_RETRY_TAG, build_operator_alert_sensor
from eams_pipeline.orchestration.partitions import (
    DISTRICTS,
    FILE_MTIME_TAG,
    FILE_SIZE_TAG,
    PARTITION_TAG,
    UPLOAD_KEY_TAG,
    upload_run_config,
)
from eams_pipeline.orchestration.resources import SmtpResource
from eams_pipeline_tests import builders
from eams_pipeline_tests.admin_db import ADMIN_URL
from eams_pipeline_tests.fault_worker import (
    ENV,
    Worker,
    reconstructable_upload_job,
    worker_config,
)
from eams_pipeline_tests.fixtures_servers import SFTP_PASSWORDS
from eams_pipeline_tests.orchestration_env import OPERATORS, DagsterStorage, Pipeline, upload_key

SID_A, SID_B, SID_C = "STU-88101", "STU-88102", "STU-88103"
RETRY_NUMBER_TAG = "dagster/retry_number"
STEPS = ["upload_file", "upload_outcome", "error_report", "change_report", "district_email"]


def asset_steps(events: list) -> list[str]:
    """The asset steps of events, in order (the change-guard check is a step of its own)."""
    return [e.step_key for e in events if e.step_key in STEPS]
RERUN_FROM = {
    "claimed": "upload_file",
    "archived": "upload_file",
    "committed": "upload_outcome",
    "published": "error_report",
    "email": "district_email",
}


def file_with_errors() -> bytes:
    return builders.csv_bytes(
        [
            builders.row(SID_A),
            builders.row(SID_B, grade="13"),  # INVALID_GRADE
            builders.row(SID_C, school_code="999"),  # SCHOOL_NOT_FOUND
        ]
    )


class FaultySftpServer(LoopbackSftpServer):
    """The loopback SFTP server, able to go away in the middle of a transfer.

    With :attr:`trip` set to ``("read", b"/processed/")`` (or ``"write"``), the first read
    (write) of a file whose server path contains that part closes the listening port and
    drops every connection, before any byte of it is served (written): the server is gone
    in the middle of the download (upload). :meth:`restart` serves again on the same port.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trip: tuple[str, bytes] | None = None
        self.tripped = 0

    def _sftp_session(self, chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        chroot = self.user_dir(chan.get_extra_info("username"))
        return _TrippingSftp(self, chan, chroot=os.fsencode(chroot))

    def go_away(self) -> None:  # on the server's event loop
        self.tripped += 1
        self.trip = None
        if self._acceptor is not None:
            self._acceptor.close()
        for conn in list(self._connections):
            conn.abort()

    def restart(self) -> None:
        port = self._port or self._requested_port
        self.stop()
        self._requested_port = port
        self.start()
        assert self.port == port


class _TrippingSftp(asyncssh.SFTPServer):
    def __init__(self, owner: FaultySftpServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._paths: dict[int, bytes] = {}

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        file_obj = super().open(path, pflags, attrs)
        self._paths[id(file_obj)] = path
        return file_obj

    def _tripping(self, op: str, file_obj: object) -> bool:
        trip = self._owner.trip
        if trip is None or trip[0] != op or trip[1] not in self._paths.get(id(file_obj), b""):
            return False
        self._owner.go_away()
        return True

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        if self._tripping("read", file_obj):
            await asyncio.Event().wait()  # never answered: the connection is gone
        return super().read(file_obj, offset, size)  # type: ignore[return-value]

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        if self._tripping("write", file_obj):
            await asyncio.Event().wait()
        return super().write(file_obj, offset, data)  # type: ignore[return-value]


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[FaultySftpServer]:
    """Replaces the plain server of fixtures_servers for these tests (same users)."""
    with FaultySftpServer(tmp_path / "sftp", SFTP_PASSWORDS) as server:
        yield server


_UPLOAD_DAYS = itertools.count()


@pytest.fixture
def instance(
    module_dagster_storage: DagsterStorage, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """The instance of the shipped dagster.yaml (PostgreSQL storage shared by the module:
    each test's uploads are on a day of their own, so their upload keys differ); the
    worker's resources are the pipeline's."""
    module_dagster_storage.use(monkeypatch)
    monkeypatch.setenv(
        ENV, worker_config(pipeline.db_url, str(pipeline.archive_dir), pipeline.smtp.port)
    )
    pipeline.clock.advance(86400 * next(_UPLOAD_DAYS))
    with dg.DagsterInstance.get() as inst:
        assert inst.run_retries_enabled and inst.run_retries_max_retries == 2
        yield inst


# -- what the sensor, run monitoring and the retry daemon do ----------------------------------


def sensor_request(
    pipeline: Pipeline, instance: dg.DagsterInstance, data: bytes, code: str = "D001"
) -> dict[str, str]:
    """Upload, let it settle; the tags of the run the sensor requests (its partition, the
    district, added; its upload in the tags, and in the run config made from them)."""
    pipeline.upload(code, data)
    first = pipeline.tick(instance, code, None)
    pipeline.clock.advance(pipeline.settle)
    request = pipeline.request(pipeline.tick(instance, code, first.cursor))
    upload_key(request)  # tag, run config and partition agree
    assert request.partition_key == code
    instance.add_dynamic_partitions(DISTRICTS.name, [code])
    assert request.tags[FILE_SIZE_TAG] and request.tags[FILE_MTIME_TAG]
    return {**request.tags, PARTITION_TAG: code}


def the_run(instance: dg.DagsterInstance, key: str) -> dg.DagsterRun:
    [run] = instance.get_runs(filters=dg.RunsFilter(tags={UPLOAD_KEY_TAG: key}), limit=1)
    return run


def worker_died(instance: dg.DagsterInstance, key: str) -> dg.DagsterRun:
    """Run monitoring: the run's worker is gone, the run is failed (and will be retried)."""
    run = the_run(instance, key)
    assert run.status == dg.DagsterRunStatus.STARTED  # nothing was written by the dead worker
    instance.report_run_failed(run, message="run worker exited unexpectedly")
    run = instance.get_run_by_id(run.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    return run


def retry(
    instance: dg.DagsterInstance, parent: dg.DagsterRun, number: int | None = None
) -> dg.JobExecutionResult:
    """The retry daemon's re-execution from failure (``number``), or an operator's (None)."""
    tags = {k: v for k, v in parent.tags.items() if not k.startswith("dagster/")}
    tags[PARTITION_TAG] = parent.tags[PARTITION_TAG]
    # the run group (what max_retries counts) is found by these tags, as the daemon sets them
    tags["dagster/parent_run_id"] = parent.run_id
    tags["dagster/root_run_id"] = parent.root_run_id or parent.run_id
    if number is not None:
        assert parent.tags.get(WILL_RETRY_TAG) == "true", parent.tags
        tags[RETRY_NUMBER_TAG] = str(number)
    return dg.execute_job(
        reconstructable_upload_job(),
        instance,
        tags=tags,
        run_config=parent.run_config,  # the daemon's and the UI's re-executions keep it
        reexecution_options=dg.ReexecutionOptions.from_failure(parent.run_id, instance),
    )


def outcome_metadata(result: dg.JobExecutionResult) -> dict[str, object]:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("upload_outcome")
    ]
    metadata = event.step_materialization_data.materialization.metadata
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


# -- the guarantees -------------------------------------------------------------------------


def district_mails(pipeline: Pipeline, code: str = "D001") -> list:
    return [m for m in pipeline.smtp.messages if f"@{code.lower()}.example.org" in m["To"]]


def assert_applied_once(
    pipeline: Pipeline, key: str, code: str = "D001", *, emails: int = 1
) -> None:
    conn = pipeline.conn
    conn.rollback()  # a fresh snapshot
    uploads = conn.execute("SELECT upload_key, status FROM uploads").fetchall()
    assert uploads == [(key, "partially_processed")]
    upload = get_upload(conn, key)
    assert upload is not None
    assert (upload.counts["rows"], upload.counts["added"], upload.counts["errors"]) == (3, 1, 2)
    assert set(builders.students(conn, code)) == {SID_A}
    builders.assert_license_invariant(conn)
    assert builders.used(conn, f"ENT-{code}") == 1
    conn.rollback()

    assert pipeline.files(code, "incoming") == []
    assert pipeline.files(code, "processed") == []  # the raw file (clear passwords) is gone
    name = f"students_errors_{upload.upload_id}.csv"
    assert pipeline.files(code, "errors") == [name]  # no temporary file left behind
    content = (pipeline.user_dir(code) / "errors" / name).read_text(encoding="utf-8")
    assert "INVALID_GRADE" in content and "SCHOOL_NOT_FOUND" in content
    assert [p.name for p in (pipeline.archive_dir / code).iterdir()] != []

    mails = district_mails(pipeline, code)
    assert len(mails) == emails, [m["Subject"] for m in mails]
    for mail in mails:
        assert "PARTIALLY" in mail["Subject"]
        assert f"/errors/{name}" in mail.get_content()


# -- the run worker killed ------------------------------------------------------------------


@pytest.mark.parametrize("point", ["claimed", "archived", "committed", "published", "email"])
def test_run_worker_killed_then_retried_from_failure(
    pipeline: Pipeline, instance: dg.DagsterInstance, point: str
) -> None:
    tags = sensor_request(pipeline, instance, file_with_errors())
    key = tags[UPLOAD_KEY_TAG]
    worker = Worker(tags, pause=point)
    try:
        worker.wait_for_line(f"paused {point}")
    finally:
        worker.stop()

    # what the dead worker left behind
    assert pipeline.files("D001", "incoming") == []
    upload = get_upload(pipeline.conn, key)
    pipeline.conn.rollback()
    applied = point in ("committed", "published", "email")
    assert (upload is not None) == applied
    assert pipeline.files("D001", "errors") == (
        []
        if point in ("claimed", "archived", "committed")
        else [f"students_errors_{upload.upload_id}.csv"]
    )
    assert district_mails(pipeline) == []

    failed = worker_died(instance, key)
    result = retry(instance, failed, 1)
    assert result.success
    # from failure: the steps that had not succeeded, the one in progress included
    assert asset_steps(result.get_step_success_events()) == STEPS[
        STEPS.index(RERUN_FROM[point]) :
    ]
    if point == "committed":
        assert outcome_metadata(result)["already_applied"] is True
    assert_applied_once(pipeline, key)


def test_run_worker_killed_after_the_relay_accepted_the_email_emails_again(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    """The one window where exactly once is not kept, by choice: 'sent' is recorded by the
    step's materialization once the relay accepted the email. A worker killed in between
    (milliseconds in real life) gets the district emailed again by the retry: at least
    once, never lost. Everything else stays exactly once."""
    tags = sensor_request(pipeline, instance, file_with_errors())
    key = tags[UPLOAD_KEY_TAG]
    worker = Worker(tags, pause="emailed")
    try:
        worker.wait_for_line("paused emailed")
    finally:
        worker.stop()
    [first] = district_mails(pipeline)
    assert retry(instance, worker_died(instance, key), 1).success
    assert_applied_once(pipeline, key, emails=2)
    second = district_mails(pipeline)[1]
    assert second["Subject"] == first["Subject"]
    assert second.get_content() == first.get_content()


def _wait(condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)
    return value


def test_run_worker_killed_in_the_middle_of_the_apply(
    pipeline: Pipeline, instance: dg.DagsterInstance, db_url: str
) -> None:
    tags = sensor_request(pipeline, instance, file_with_errors())
    key = tags[UPLOAD_KEY_TAG]
    with psycopg.connect(db_url, autocommit=True) as watch, psycopg.connect(db_url) as blocker:
        # the license move of the apply waits for these row locks (the students' foreign
        # keys do not: FOR NO KEY UPDATE leaves FOR KEY SHARE free)
        blocker.execute("SELECT order_id FROM orders FOR NO KEY UPDATE")
        worker = Worker(tags)
        try:
            [(pid, query)] = _wait(
                lambda: watch.execute(
                    """SELECT pid, query FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'"""
                ).fetchall(),
                "the worker's apply never waited for the orders lock",
            )
            assert "UPDATE orders" in query
            written = {
                r[0]
                for r in watch.execute(
                    """SELECT relation::regclass::text FROM pg_locks
                       WHERE pid = %s AND mode = 'RowExclusiveLock' AND relation IS NOT NULL""",
                    (pid,),
                )
            }
            assert {"uploads", "students"} <= written  # in the middle: rows already written
            worker.kill()
        finally:
            worker.stop()
        blocker.rollback()
        # the orphaned backend finds its client gone and rolls back
        _wait(
            lambda: (
                not watch.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchall()
            ),
            "the killed worker's backend is still there",
        )

    assert get_upload(pipeline.conn, key) is None  # nothing of the apply was committed
    assert builders.students(pipeline.conn, "D001") == {}
    builders.assert_license_invariant(pipeline.conn)
    pipeline.conn.rollback()

    failed = worker_died(instance, key)
    assert retry(instance, failed, 1).success
    assert_applied_once(pipeline, key)


# -- the SFTP server going away -------------------------------------------------------------


def run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.JobExecutionResult:
    """The sensor's run, executed in this process."""
    return dg.execute_job(
        reconstructable_upload_job(),
        instance,
        tags=tags,
        run_config=upload_run_config(tags[UPLOAD_KEY_TAG]),
    )


def step_error(result: dg.JobExecutionResult, step: str) -> str:
    [event] = [e for e in result.get_step_failure_events() if e.step_key == step]
    error = event.step_failure_data.error
    while error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
        error = error.cause
    return f"{error.cls_name}: {error.message}"


@pytest.mark.parametrize(
    ("op", "path", "step"),
    [("read", b"/processed/", "upload_file"), ("write", b"/errors/", "error_report")],
    ids=["download", "publish"],
)
def test_sftp_server_goes_away_in_the_middle_of_a_transfer(
    pipeline: Pipeline, instance: dg.DagsterInstance, op: str, path: bytes, step: str
) -> None:
    server = pipeline.sftp
    assert isinstance(server, FaultySftpServer)
    tags = sensor_request(pipeline, instance, file_with_errors())
    key = tags[UPLOAD_KEY_TAG]

    server.trip = (op, path)
    first = run(instance, tags)
    assert not first.success and server.tripped == 1
    assert "SftpTransientError" in step_error(first, step)
    assert pipeline.files("D001", "processed") == [f"students_{key}.csv"]  # claimed, kept
    applied = step == "error_report"
    assert (get_upload(pipeline.conn, key) is not None) == applied
    pipeline.conn.rollback()
    assert district_mails(pipeline) == []

    # the first retry comes while the server is still away: it fails again, at connecting
    failed = instance.get_run_by_id(first.run_id)
    second = retry(instance, failed, 1)
    assert not second.success
    assert "cannot connect" in step_error(second, step)

    server.restart()
    failed = instance.get_run_by_id(second.run_id)
    third = retry(instance, failed, 2)
    assert third.success
    assert asset_steps(third.get_step_success_events()) == STEPS[STEPS.index(step) :]
    assert_applied_once(pipeline, key)


# -- the SMTP server down -------------------------------------------------------------------


def alert(
    pipeline: Pipeline, instance: dg.DagsterInstance, result: dg.JobExecutionResult, port: int
) -> dg.SkipReason | None:
    """One evaluation of the operators' alert sensor for a failed run."""
    sensor = build_operator_alert_sensor([reconstructable_upload_job().get_definition()])
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        resources={"smtp": SmtpResource(port=port, timeout_seconds=5)},
    )
    return sensor(context.for_run_failure())


def test_smtp_server_down_for_the_email_step_retried_then_alert_then_reexecuted(
    pipeline: Pipeline, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    tags = sensor_request(pipeline, instance, file_with_errors())
    key = tags[UPLOAD_KEY_TAG]
    port = pipeline.smtp.port
    pipeline.smtp.stop()

    # the run and its two retries (dagster.yaml: max_retries 2) fail at the email
    results = [run(instance, tags)]
    for number in (1, 2):
        failed = instance.get_run_by_id(results[-1].run_id)
        results.append(retry(instance, failed, number))
    for number, result in enumerate(results):
        assert not result.success
        assert [e.step_key for e in result.get_step_failure_events()] == ["district_email"]
        assert "ConnectionRefusedError" in step_error(result, "district_email")
        will_retry = instance.get_run_by_id(result.run_id).tags[WILL_RETRY_TAG]
        assert will_retry == ("true" if number < 2 else "false")
    # the retries re-ran the email only: applied once, published once, before the email
    assert [e.step_key for e in results[2].get_step_success_events()] == []
    assert get_upload(pipeline.conn, key) is not None
    pipeline.conn.rollback()

    # the relay is back (same port); the alert sensor sees the three failures
    pipeline.smtp = LoopbackSmtpServer(tmp_path / "mail-after", port=port)
    pipeline.smtp.start()
    try:
        for result in results[:2]:
            assert isinstance(alert(pipeline, instance, result, port), dg.SkipReason)
        assert pipeline.smtp.messages == []
        assert alert(pipeline, instance, results[2], port) is None
        [mail] = pipeline.smtp.wait_for(1)
        assert mail["To"] == OPERATORS
        assert results[2].run_id in mail["Subject"] and "D001" in mail["Subject"]
        assert "step district_email: ConnectionRefusedError" in mail.get_content()

        # the operator re-executes the last run from its failure: the district is emailed once
        again = retry(instance, instance.get_run_by_id(results[2].run_id))
        assert again.success
        assert asset_steps(again.get_step_success_events()) == ["district_email"]
        assert_applied_once(pipeline, key)
        assert len(pipeline.smtp.messages) == 2  # the alert and the district's email
    finally:
        pipeline.smtp.stop()


# -- PostgreSQL restarting ------------------------------------------------------------------


def _between_steps(monkeypatch: pytest.MonkeyPatch, before: str, action) -> list[str]:
    """Call ``action`` once, when the step ``before`` starts (in this process)."""
    original = assets._ref
    fired: list[str] = []

    def hooked(context: dg.AssetExecutionContext, upload_ref):
        if context.asset_key == dg.AssetKey(before) and not fired:
            fired.append(action())
        return original(context, upload_ref)

    monkeypatch.setattr(assets, "_ref", hooked)
    return fired


def _terminate(databases: list[str], spare: int) -> int:
    """What a restart does to the clients: every backend of these databases terminated."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = ANY(%s) AND pid <> pg_backend_pid() AND pid <> %s""",
            (databases, spare),
        ).fetchall()
    return len(rows)


def test_postgres_restart_between_two_steps_the_run_carries_on(
    pipeline: Pipeline,
    instance: dg.DagsterInstance,
    module_dagster_storage: DagsterStorage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tags = sensor_request(pipeline, instance, file_with_errors())
    key = tags[UPLOAD_KEY_TAG]
    databases = [pipeline.conn.info.dbname, conninfo_to_dict(module_dagster_storage.url)["dbname"]]
    observer = pipeline.conn.info.backend_pid  # the test's own connection is spared

    def restart() -> str:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            held = admin.execute(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = %s AND pid <> %s""",
                (databases[0], observer),
            ).fetchone()[0]
        assert held == 0  # no step keeps a connection to the database after it ends
        return f"terminated {_terminate(databases, observer)}"

    fired = _between_steps(monkeypatch, "error_report", restart)
    result = run(instance, tags)
    assert fired  # the restart happened, between the two steps
    assert result.success
    assert_applied_once(pipeline, key)


def test_postgres_restart_in_the_middle_of_the_apply_then_retried(
    pipeline: Pipeline, instance: dg.DagsterInstance, db_url: str
) -> None:
    tags = sensor_request(pipeline, instance, file_with_errors())
    key = tags[UPLOAD_KEY_TAG]
    name = pipeline.conn.info.dbname
    observer = pipeline.conn.info.backend_pid
    terminated: list[int] = []

    def restart_while_applying() -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            _wait(
                lambda: admin.execute(
                    """SELECT pid FROM pg_stat_activity
                       WHERE datname = %s AND wait_event_type = 'Lock'""",
                    (name,),
                ).fetchall(),
                "the apply never waited for the orders lock",
            )
        terminated.append(_terminate([name], observer))

    blocker = psycopg.connect(db_url)
    try:
        blocker.execute("SELECT order_id FROM orders FOR NO KEY UPDATE")  # holds the apply
        restarter = threading.Thread(target=restart_while_applying)
        restarter.start()
        first = run(instance, tags)
        restarter.join(timeout=30)
    finally:
        blocker.close()
    assert terminated and terminated[0] >= 2  # the apply's connection and the blocker's
    assert not first.success
    # libpq reports the termination as the server's AdminShutdown message when it reads it,
    # or as a closed connection when it was writing (the COPY of the apply) at that moment
    error = step_error(first, "upload_outcome")
    assert (
        "AdminShutdown: terminating connection" in error
        or "server closed the connection unexpectedly" in error
    ), error
    assert get_upload(pipeline.conn, key) is None  # the apply's transaction rolled back
    assert builders.students(pipeline.conn, "D001") == {}
    pipeline.conn.rollback()

    again = retry(instance, instance.get_run_by_id(first.run_id), 1)
    assert again.success
    assert asset_steps(again.get_step_success_events()) == STEPS[1:]
    assert_applied_once(pipeline, key)


def test_postgres_down_when_the_next_step_starts_then_retried(
    pipeline: Pipeline, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    tags = sensor_request(pipeline, instance, file_with_errors())
    key = tags[UPLOAD_KEY_TAG]
    name = pipeline.conn.info.dbname
    observer = pipeline.conn.info.backend_pid

    def go_down() -> str:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
            )
        return f"terminated {_terminate([name], observer)}"

    _between_steps(monkeypatch, "error_report", go_down)
    try:
        first = run(instance, tags)
        assert not first.success
        assert "OperationalError" in step_error(first, "error_report")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name))
            )
    assert district_mails(pipeline) == [] and pipeline.files("D001", "errors") == []

    again = retry(instance, instance.get_run_by_id(first.run_id), 1)
    assert again.success
    assert asset_steps(again.get_step_success_events()) == STEPS[2:]
    assert_applied_once(pipeline, key)
