"""Retention of Dagster runs and their events: the decision tested directly, the job on a
real Dagster instance on PostgreSQL with runs that have events, asset materializations and
asset check executions, against the real MY Access uploads table."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from eams_pipeline.config import ConfigError, run_retention_batch, run_retention_days
from eams_pipeline.core.run_retention import (
    LAST_OF_DISTRICT,
    LAST_OF_JOB,
    RECENT,
    UNFINISHED,
    UPLOAD_PENDING,
    RunFacts,
    cutoff_for,
    decide,
)
from eams_pipeline.db.upload_requests import record_sensor_request
from eams_pipeline.orchestration.check_job import KIND_TAG
from eams_pipeline.orchestration.partitions import DISTRICT_TAG, PARTITION_TAG, UPLOAD_KEY_TAG
from eams_pipeline.orchestration.resources import DatabaseResource
from eams_pipeline.orchestration.run_retention_job import (
    build_run_retention_job,
    enforce_run_retention,
)
from eams_pipeline_tests import builders

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
CUTOFF = NOW - 90 * DAY


def _run(run_id: str, age_days: float, district: str | None = "D1", *keys: str, **kw) -> RunFacts:
    return RunFacts(
        run_id=run_id,
        created_at=NOW - age_days * DAY,
        finished=kw.get("finished", True),
        job_name=kw.get("job", "upload_job"),
        district=district,
        upload_keys=keys,
    )


# -- the decision --------------------------------------------------------------------------


def test_old_finished_runs_go_but_not_the_ones_an_operator_or_a_district_still_needs() -> None:
    runs = [
        _run("old", 100, "D1", "D1-k1"),
        _run("held", 100, "D1", "D1-k2"),  # its upload is held: an operator needs it
        _run("started", 100, "D1", "D1-k3", finished=False),
        _run("recent", 10, "D1", "D1-k4"),
        _run("d2-old", 200, "D2", "D2-k1"),
        _run("d2-last", 150, "D2", "D2-k2"),  # D2 has been quiet since: its last run stays
        _run("fleet-old", 95, None, job="fleet_status_job"),
        _run("fleet-last", 91, None, job="fleet_status_job"),
    ]
    decision = decide(
        runs,
        cutoff=CUTOFF,
        pending_upload_keys={"D1-k2"},
        newest_run_of={
            ("district", "D1"): "later-run",
            ("district", "D2"): "d2-last",
            ("job", "fleet_status_job"): "fleet-last",
        },
    )
    assert decision.delete == ["old", "d2-old", "fleet-old"]
    assert decision.kept == {
        UPLOAD_PENDING: 1,
        UNFINISHED: 1,
        RECENT: 1,
        LAST_OF_DISTRICT: 1,
        LAST_OF_JOB: 1,
    }


def test_a_run_is_kept_when_any_of_its_upload_keys_is_pending() -> None:
    # an old run names its upload by dagster/partition, a new one by eams/upload_key
    runs = [_run("a", 100, "D1", "D1", "D1-k2"), _run("b", 100, "D1", "D1-k3")]
    decision = decide(
        runs,
        cutoff=CUTOFF,
        pending_upload_keys={"D1-k2"},
        newest_run_of={("district", "D1"): "z"},
    )
    assert decision.delete == ["b"]


def test_a_group_whose_newest_run_is_unknown_is_kept_whole() -> None:
    decision = decide(
        [_run("a", 100, "D9")], cutoff=CUTOFF, pending_upload_keys=set(), newest_run_of={}
    )
    assert decision.delete == [] and decision.kept == {LAST_OF_DISTRICT: 1}


def test_the_cutoff_needs_a_day_and_an_aware_clock() -> None:
    assert cutoff_for(NOW, 90) == CUTOFF
    with pytest.raises(ValueError, match="at least 1 day"):
        cutoff_for(NOW, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        decide([], cutoff=CUTOFF.replace(tzinfo=None), pending_upload_keys=(), newest_run_of={})


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EAMS_RUN_RETENTION_DAYS", raising=False)
    monkeypatch.delenv("EAMS_RUN_RETENTION_BATCH", raising=False)
    assert (run_retention_days(), run_retention_batch()) == (90, 500)
    monkeypatch.setenv("EAMS_RUN_RETENTION_DAYS", "0")
    with pytest.raises(ConfigError, match="EAMS_RUN_RETENTION_DAYS"):
        run_retention_days()
    monkeypatch.setenv("EAMS_RUN_RETENTION_BATCH", "x")
    with pytest.raises(ConfigError, match="EAMS_RUN_RETENTION_BATCH"):
        run_retention_batch()


# -- the job on a real instance ------------------------------------------------------------


@dg.asset(check_specs=[dg.AssetCheckSpec("sane", asset="nightly")])
def nightly() -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={"rows": 20}, check_results=[dg.AssetCheckResult(passed=True)]
    )


@dg.op
def tidy() -> None:
    pass


@dg.job
def housekeeping() -> None:  # a job whose runs have no district, like fleet_status_job
    tidy()


def _housekeeping(instance: dg.DagsterInstance) -> str:
    result = housekeeping.execute_in_process(instance=instance)
    assert result.success
    return result.run_id


@pytest.fixture
def pg_instance(dagster_pg: str, tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _materialize(instance: dg.DagsterInstance, tags: dict[str, str]) -> str:
    result = dg.materialize([nightly], instance=instance, tags=tags)
    assert result.success
    return result.run_id


def _uploads(conn: psycopg.Connection, statuses: dict[str, str]) -> None:
    builders.load(conn, builders.district_doc(code="D001"), builders.district_doc(code="D002"))
    for key, status in statuses.items():
        conn.execute(
            """INSERT INTO uploads (district_id, upload_key, file_name, received_at, status,
                                    applied_at, guard_trip)
               SELECT district_id, %s, 'students.csv', now(), %s,
                      CASE WHEN %s::text IN ('processed', 'rejected') THEN now() END,
                      CASE WHEN %s::text = 'held' THEN '{"rule": "max_deactivated_pct"}'::jsonb END
               FROM districts WHERE code = %s""",
            (key, status, status, status, key.split("-")[0]),
        )
    conn.commit()


def _counts(dagster_pg: str, run_ids: list[str]) -> dict[str, int]:
    with psycopg.connect(dagster_pg) as c:
        return {
            table: c.execute(
                f"SELECT count(*) FROM {table} WHERE run_id = ANY(%s)", (run_ids,)
            ).fetchone()[0]
            for table in ("runs", "run_tags", "event_logs", "asset_check_executions")
        }


def test_the_job_deletes_old_runs_with_their_events_in_batches(
    pg_instance: dg.DagsterInstance,
    conn: psycopg.Connection,
    db_url: str,
    dagster_pg: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _uploads(
        conn,
        {
            "D001-20260101T000000000000Z": "processed",
            "D001-20260102T000000000000Z": "held",
            "D001-20260103T000000000000Z": "processed",
            "D001-20260104T000000000000Z": "received",  # a run crashed on it
            "D002-20260101T000000000000Z": "processed",
            "D002-20260102T000000000000Z": "rejected",
        },
    )
    # the requests of an upload with an outcome go with the old runs; one whose run crashed
    # (received) stays
    for key in ("D001-20260101T000000000000Z", "D001-20260104T000000000000Z"):
        assert record_sensor_request(conn, "D001", key, 10, 1)
    conn.commit()

    def upload_run(key: str, tag: str = UPLOAD_KEY_TAG) -> str:
        return _materialize(pg_instance, {DISTRICT_TAG: key.split("-")[0], tag: key})

    old = {
        "d1-processed": upload_run("D001-20260101T000000000000Z", PARTITION_TAG),
        "d1-held": upload_run("D001-20260102T000000000000Z", PARTITION_TAG),
        "d1-processed-2": upload_run("D001-20260103T000000000000Z"),
        "d2-processed": upload_run("D002-20260101T000000000000Z"),
        "d1-received": upload_run("D001-20260104T000000000000Z"),
        "other-1": _housekeeping(pg_instance),
        "d2-last": upload_run("D002-20260102T000000000000Z"),
        "other-last": _housekeeping(pg_instance),
    }
    time.sleep(0.05)
    cutoff = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    recent = upload_run("D001-20260104T000000000000Z")  # D001's newest run: recent
    gone = [old["d1-processed"], old["d1-processed-2"], old["d2-processed"], old["other-1"]]
    stay = [r for r in old.values() if r not in gone] + [recent]
    before = _counts(dagster_pg, gone)
    assert before["event_logs"] > 10 and before["asset_check_executions"] == 3

    # a dry run counts and deletes nothing
    dry = enforce_run_retention(
        pg_instance, conn, now=cutoff + 90 * DAY, days=90, batch_size=2, dry_run=True
    )
    assert (dry.deleted, dry.scanned) == (4, 8) and _counts(dagster_pg, gone) == before

    # batches of 2: deleted runs in a batch must not stop the paging (the cursor)
    monkeypatch.setenv("EAMS_RUN_RETENTION_BATCH", "2")
    job = build_run_retention_job(clock=lambda: cutoff + 90 * DAY)
    result = job.execute_in_process(
        instance=pg_instance,
        resources={"db": DatabaseResource(url=db_url)},
    )
    assert result.success
    assert result.output_for_node("delete_old_runs") == 4
    [output] = [e for e in result.all_node_events if e.is_successful_output]
    metadata = output.step_output_data.metadata
    assert metadata["deleted"].value == 4 and metadata["batches"].value == 4
    assert metadata["kept"].value == {UPLOAD_PENDING: 2, LAST_OF_DISTRICT: 1, LAST_OF_JOB: 1}
    assert metadata["upload_requests_deleted"].value == 1
    requests = conn.execute("SELECT upload_key FROM upload_requests").fetchall()
    conn.commit()
    assert requests == [("D001-20260104T000000000000Z",)]
    assert _counts(dagster_pg, gone) == dict.fromkeys(before, 0)
    left = _counts(dagster_pg, stay)
    assert left["runs"] == len(stay) and left["asset_check_executions"] == len(stay) - 1
    assert {r.dagster_run.run_id for r in pg_instance.get_run_records()} >= set(stay)

    # again: nothing more may go (idempotent); the kept ones by reason
    again = enforce_run_retention(
        pg_instance, conn, now=cutoff + 90 * DAY, days=90, batch_size=2
    )
    assert again.deleted == 0 and again.complete
    assert again.kept == {UPLOAD_PENDING: 2, LAST_OF_DISTRICT: 1, LAST_OF_JOB: 1}


def test_a_capped_job_resumes_with_the_oldest_left(
    pg_instance: dg.DagsterInstance, conn: psycopg.Connection, db_url: str
) -> None:
    _uploads(conn, {})
    runs = [_materialize(pg_instance, {DISTRICT_TAG: "D001"}) for _ in range(4)]
    now = dt.datetime.now(dt.UTC) + 90 * DAY + dt.timedelta(seconds=1)
    first = enforce_run_retention(pg_instance, conn, now=now, days=90, batch_size=10, max_runs=2)
    assert first.deleted == 2 and not first.complete
    assert first.deleted_run_ids == runs[:2]  # the oldest first
    second = enforce_run_retention(pg_instance, conn, now=now, days=90, batch_size=10)
    assert second.deleted_run_ids == [runs[2]] and second.complete
    assert [r.dagster_run.run_id for r in pg_instance.get_run_records()] == [runs[3]]


def test_the_shipped_instance_bounds_its_ticks_like_its_runs(
    pg_instance: dg.DagsterInstance,
) -> None:
    # fleet_status ticks every 15 minutes and Dagster keeps schedule ticks forever by
    # default; sensor ticks that requested runs would outlive the runs they started
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickStatus

    schedule = pg_instance.get_tick_retention_settings(InstigatorType.SCHEDULE)
    sensor = pg_instance.get_tick_retention_settings(InstigatorType.SENSOR)
    days = run_retention_days()
    assert all(0 < d <= days for s, d in schedule.items() if s != TickStatus.STARTED)
    assert sensor[TickStatus.SKIPPED] == 1
    assert sensor[TickStatus.SUCCESS] == days and sensor[TickStatus.FAILURE] == days


def test_a_districts_last_upload_run_is_kept_over_its_later_check_runs(
    pg_instance: dg.DagsterInstance, conn: psycopg.Connection
) -> None:
    _uploads(conn, {"D001-20260101T000000000000Z": "processed"})
    upload = _materialize(
        pg_instance, {DISTRICT_TAG: "D001", UPLOAD_KEY_TAG: "D001-20260101T000000000000Z"}
    )
    checks = [
        _materialize(
            pg_instance,
            {DISTRICT_TAG: "D001", UPLOAD_KEY_TAG: key, KIND_TAG: "check"},  # check_upload's
        )
        for key in ("D001-20260102T000000000000Z", "D001-20260103T000000000000Z")
    ]
    time.sleep(0.05)
    cutoff = dt.datetime.now(dt.UTC)
    report = enforce_run_retention(
        pg_instance, conn, now=cutoff + 90 * DAY, days=90, batch_size=10
    )
    left = {r.dagster_run.run_id for r in pg_instance.get_run_records()}
    assert upload in left and not left & set(checks)
    assert report.deleted == 2
