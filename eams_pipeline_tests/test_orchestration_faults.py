"""Faults on the Dagster path (issue 7 §4): the run worker killed, SFTP and SMTP servers
going away, PostgreSQL restarting. Real servers on 127.0.0.1 and the shipped dagster.yaml
(PostgreSQL run storage, run retries). Every test ends with the same guarantees:

- the upload applied exactly once (one uploads row, final status, students and
  ``orders.used`` consistent);
- the district emailed exactly once;
- the error file published exactly once (one file in errors/, nothing else left there).

What the daemons do is done by the test, as they would: run monitoring reports a run whose
worker died as failed (``report_run_failed``); the retry daemon re-executes a failed run from
its failure, with ``dagster/retry_number``, while the instance tags it ``dagster/will_retry``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from eams_pipeline.db.uploads import get_upload
from eams_pipeline.orchestration.partitions import FILE_MTIME_TAG, FILE_SIZE_TAG, UPLOADS
from eams_pipeline.orchestration.sensors import PARTITION_TAG, WILL_RETRY_TAG
from eams_pipeline_tests import builders
from eams_pipeline_tests.fault_worker import (
    ENV,
    Worker,
    reconstructable_upload_job,
    worker_config,
)
from eams_pipeline_tests.orchestration_env import Pipeline

SID_A, SID_B, SID_C = "STU-88101", "STU-88102", "STU-88103"
RETRY_NUMBER_TAG = "dagster/retry_number"
STEPS = ["upload_file", "upload_outcome", "error_report", "district_email"]
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


@pytest.fixture
def instance(
    dagster_home: object, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """The instance of the shipped dagster.yaml; the worker's resources are the pipeline's."""
    monkeypatch.setenv(
        ENV, worker_config(pipeline.db_url, str(pipeline.archive_dir), pipeline.smtp.port)
    )
    with dg.DagsterInstance.get() as inst:
        assert inst.run_retries_enabled and inst.run_retries_max_retries == 2
        yield inst


# -- what the sensor, run monitoring and the retry daemon do ----------------------------------


def sensor_request(
    pipeline: Pipeline, instance: dg.DagsterInstance, data: bytes, code: str = "D001"
) -> dict[str, str]:
    """Upload, let it settle; the tags of the run the sensor requests (partition added)."""
    pipeline.upload(code, data)
    first = pipeline.tick(instance, code, None)
    pipeline.clock.advance(pipeline.settle)
    request = pipeline.request(pipeline.tick(instance, code, first.cursor))
    key = request.partition_key
    assert key is not None
    instance.add_dynamic_partitions(UPLOADS.name, [key])
    assert request.tags[FILE_SIZE_TAG] and request.tags[FILE_MTIME_TAG]
    return {**request.tags, PARTITION_TAG: key}


def the_run(instance: dg.DagsterInstance, key: str) -> dg.DagsterRun:
    [run] = instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: key}), limit=1)
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
    if number is not None:
        assert parent.tags.get(WILL_RETRY_TAG) == "true", parent.tags
        tags[RETRY_NUMBER_TAG] = str(number)
    return dg.execute_job(
        reconstructable_upload_job(),
        instance,
        tags=tags,
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


def assert_applied_once(pipeline: Pipeline, key: str, code: str = "D001") -> None:
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
    assert pipeline.files(code, "processed") == [f"students_{key}.csv"]
    name = f"students_errors_{upload.upload_id}.csv"
    assert pipeline.files(code, "errors") == [name]  # no temporary file left behind
    content = (pipeline.user_dir(code) / "errors" / name).read_text(encoding="utf-8")
    assert "INVALID_GRADE" in content and "SCHOOL_NOT_FOUND" in content
    assert [p.name for p in (pipeline.archive_dir / code).iterdir()] != []

    [mail] = district_mails(pipeline, code)
    assert "PARTIALLY" in mail["Subject"]
    assert f"/errors/{name}" in mail.get_content()


# -- the run worker killed ------------------------------------------------------------------


@pytest.mark.parametrize("point", ["claimed", "archived", "committed", "published", "email"])
def test_run_worker_killed_then_retried_from_failure(
    pipeline: Pipeline, instance: dg.DagsterInstance, point: str
) -> None:
    tags = sensor_request(pipeline, instance, file_with_errors())
    key = tags[PARTITION_TAG]
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
    assert [e.step_key for e in result.get_step_success_events()] == STEPS[
        STEPS.index(RERUN_FROM[point]) :
    ]
    if point == "committed":
        assert outcome_metadata(result)["already_applied"] is True
    assert_applied_once(pipeline, key)


def _wait(condition, what: str, timeout: float = 30):
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
    key = tags[PARTITION_TAG]
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
