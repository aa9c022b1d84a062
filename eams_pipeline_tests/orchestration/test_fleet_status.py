"""One screen for the fleet: the ranking (pure), the one query over all districts (real
PostgreSQL, uploads processed by the real engine), the fleet_status asset and its checks
materialized on a real Dagster instance on PostgreSQL, and `eams fleet status`."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.tags import MAX_RETRIES_TAG, WILL_RETRY_TAG

from eams_pipeline.core.fleet_ranking import (
    OK,
    DistrictFacts,
    FailedRun,
    FleetState,
    LastUpload,
    district_attention,
    dues_between,
    fleet_status,
    last_due,
    markdown_table,
    nights_without_applied,
)
from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.db.fleet_facts import _FACTS, district_facts, query_params
from eams_pipeline.db.uploads import ensure_upload
from eams_pipeline.orchestration.code_location import build_definitions
from eams_pipeline.orchestration.fleet_status import (
    FLEET_JOB_NAME,
    LICENSES_SUFFICIENT,
    NO_FAILED_UPLOADS,
    NO_LONG_HELD_UPLOADS,
    NO_STALE_DISTRICTS,
    build_fleet_status_asset,
    read_fleet_status,
)
from eams_pipeline.orchestration.jobs import UPLOAD_JOB_NAME
from eams_pipeline.orchestration.partitions import DISTRICT_TAG
from eams_pipeline.orchestration.resources import DatabaseResource, default_resources
from eams_pipeline_tests import builders

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.UTC
T = dt.datetime(2026, 1, 14, 12, 0, tzinfo=UTC)  # 06:00 in Chicago
DAY = dt.timedelta(days=1)
SIX = dt.time(6, 0)


# -- expected nights -----------------------------------------------------------------------


def test_expected_nights_are_counted_in_the_district_timezone() -> None:
    chicago = "America/Chicago"
    assert last_due(T, SIX, chicago) == T  # exactly at the due time
    assert last_due(T - dt.timedelta(minutes=1), SIX, chicago) == T - DAY
    # due times in (after, now]: the one at `after` is not counted, the one at `now` is
    assert dues_between(T, T + 3 * DAY, SIX, chicago) == 3
    assert dues_between(T - dt.timedelta(minutes=1), T, SIX, chicago) == 1
    assert (
        dues_between(T + dt.timedelta(hours=1), T + 2 * DAY - dt.timedelta(hours=1), SIX, chicago)
        == 1
    )
    assert dues_between(T, T, SIX, chicago) == 0
    # across the spring-forward night 2026-03-08 (02:30 does not exist there): one a day
    week = dt.datetime(2026, 3, 5, 12, tzinfo=UTC)
    assert dues_between(week, week + 7 * DAY, dt.time(2, 30), chicago) == 7


def test_nights_without_applied_upload_count_from_the_last_one_or_the_creation() -> None:
    facts = DistrictFacts("D1", "One", "America/Chicago", SIX, created_at=T - 30 * DAY)
    # applied at 04:00 Chicago: it served that morning's 06:00; the next three mornings had none
    applied = T - 2 * dt.timedelta(hours=1) - 3 * DAY
    assert nights_without_applied(replace(facts, last_applied_at=applied), T) == 3
    assert nights_without_applied(facts, T) == 30  # never applied: since its creation
    no_expectation = DistrictFacts("D2", "Two", created_at=T - 30 * DAY)
    assert nights_without_applied(no_expectation, T) is None


# -- the states and the ranking ------------------------------------------------------------


def _facts(code: str = "D1", **kw: object) -> DistrictFacts:
    return DistrictFacts(code=code, name=f"District {code}", **kw)  # type: ignore[arg-type]


def _last(status: UploadStatus, age: dt.timedelta = dt.timedelta(hours=2), **kw) -> LastUpload:
    return LastUpload(key=f"D1-{status}", status=status, received_at=T - age, **kw)


def _states(facts: DistrictFacts, failed: FailedRun | None = None) -> list[str]:
    return [a.state for a in district_attention(facts, T, failed_run=failed)]


def test_each_state_and_its_boundary() -> None:
    assert _states(_facts()) == []
    # an upload without outcome: a run on it now, or one that died an hour ago
    assert _states(_facts(last_upload=_last(UploadStatus.RECEIVED, dt.timedelta(minutes=5)))) == []
    assert _states(_facts(last_upload=_last(UploadStatus.RECEIVED))) == [FleetState.FAILED]
    failed = FailedRun("run-1", T - DAY, "D1-20260113T080000000000Z")
    [attention] = district_attention(_facts(), T, failed_run=failed)
    assert attention.state == FleetState.FAILED and attention.run_id == "run-1"
    assert attention.key == "D1-20260113T080000000000Z"
    rejected = _facts(last_upload=_last(UploadStatus.REJECTED, error_codes={"HEADER_MISMATCH": 1}))
    [attention] = district_attention(rejected, T)
    assert attention.state == FleetState.REJECTED and "HEADER_MISMATCH" in attention.detail
    held = _facts(held=2, oldest_held_key="D1-k", oldest_held_at=T - DAY, oldest_held_rule="r")
    [attention] = district_attention(held, T)
    assert (attention.state, attention.key) == (FleetState.HELD, "D1-k")
    assert attention.detail.startswith("2 held uploads")


def test_stale_and_missing_follow_expected_by() -> None:
    base = {"timezone": "America/Chicago", "expected_by": SIX, "created_at": T - 99 * DAY}
    # received 23 hours before today's 06:00 and applied: nothing to say
    fine = _facts(
        **base,
        last_received_at=T - dt.timedelta(hours=23),
        last_applied_at=T - dt.timedelta(hours=23),
    )
    assert _states(fine) == []
    # received 25 hours before: today's file is missing, but it is one night only
    late = T - dt.timedelta(hours=25)
    assert _states(_facts(**base, last_received_at=late, last_applied_at=late)) == [
        FleetState.MISSING
    ]
    # files arrive but none is applied for three nights: stale, not missing
    rejected_daily = _facts(
        **base,
        last_received_at=T - dt.timedelta(hours=2),
        last_applied_at=T - 3 * DAY - dt.timedelta(hours=2),
    )
    assert _states(rejected_daily) == [FleetState.STALE]
    two_nights = _facts(
        **base,
        last_received_at=T - dt.timedelta(hours=2),
        last_applied_at=T - 2 * DAY - dt.timedelta(hours=2),
    )
    assert _states(two_nights) == []  # two nights are allowed
    # no expected_by: never missing nor stale
    assert _states(_facts(created_at=T - 99 * DAY)) == []


def test_error_rate_rising_needs_a_baseline_a_floor_and_a_factor() -> None:
    def rising(*rates: float) -> bool:
        return FleetState.ERRORS_RISING in _states(_facts(error_rates=rates, error_rate_key="k"))

    assert rising(0.05, 0.01, 0.02, 0.01)  # 5% against a median of 1%
    assert not rising(0.05, 0.01)  # one upload before: no baseline yet
    assert not rising(0.009, 0.0, 0.0)  # under the 1% floor
    assert not rising(0.04, 0.02, 0.02, 0.03)  # 2x the median is not more than 2x
    assert rising(0.02, 0.0, 0.0)  # from nothing to 2%
    # the baseline is the 5 before the last: an old bad night does not hide a rise
    assert rising(0.10, 0.01, 0.01, 0.01, 0.01, 0.01, 0.90, 0.90)


def test_licenses_low_under_five_percent_or_under_one() -> None:
    def low(size: int, used: int) -> bool:
        facts = _facts(licenses=size, licenses_used=used, enterprise_order="ENT-D1")
        return FleetState.LICENSES_LOW in _states(facts)

    assert not low(100, 95)  # exactly 5% left
    assert low(100, 96)
    assert not low(10, 9)  # 1 left is 10%
    assert low(10, 10)
    assert low(0, 0)  # an empty order has nothing to give
    assert not low(100_000, 95_000)


def test_the_ranking_puts_the_worst_first_and_counts_every_state() -> None:
    districts = [
        _facts("A", licenses=10, licenses_used=10),
        _facts("B", last_upload=_last(UploadStatus.REJECTED, DAY)),
        _facts("C"),
        _facts("D", last_upload=_last(UploadStatus.REJECTED), licenses=1, licenses_used=1),
        _facts("E", held=1, oldest_held_key="E-k", oldest_held_at=T - DAY),
        _facts("F"),
    ]
    status = fleet_status(
        districts, T, failed_runs={"F": FailedRun("run-f", T - dt.timedelta(hours=1))}
    )
    # failed first; two rejected: the one with more problems, then the older
    assert [d.code for d in status.ranked] == ["F", "D", "B", "E", "A"]
    assert status.counts == {
        "failed": 1,
        "rejected": 2,
        "held": 1,
        "stale": 0,
        "missing": 0,
        "errors_rising": 0,
        "licenses_low": 2,
        OK: 1,
    }
    assert status.needs_attention == 5 and status.districts == 6
    as_dict = status.as_dict(top=2)
    assert [d["district"] for d in as_dict["ranked"]] == ["F", "D"]
    assert as_dict["ranked"][1]["states"] == ["rejected", "licenses_low"]

    table = markdown_table(status, top=3)
    assert table.splitlines()[2].startswith("| 1 | F | failed |")
    assert "[run-f](/runs/run-f)" in table
    assert "2 more need attention" in table
    with pytest.raises(ValueError, match="timezone-aware"):
        fleet_status(districts, T.replace(tzinfo=None))


def test_a_table_cell_cannot_break_the_markdown() -> None:
    status = fleet_status([_facts("X|Y", licenses=0, licenses_used=0)], T)
    assert "| X\\|Y |" in markdown_table(status, top=5)
    assert markdown_table(fleet_status([_facts()], T), top=5) == "All 1 districts are fine."


# -- the fleet in the database, the asset, the command ------------------------------------


def _district(code: str, **kw: object) -> dict[str, object]:
    return builders.district_doc(code=code, **kw)  # type: ignore[arg-type]


def _csv(*rows: dict[str, str]) -> bytes:
    return builders.csv_bytes(list(rows))


@pytest.fixture
def fleet(conn: psycopg.Connection) -> dt.datetime:
    """Seven districts, each in one state, their uploads processed by the real engine at
    times relative to now; returns now."""
    now = dt.datetime.now(UTC)
    hours = dt.timedelta(hours=1)
    stale = _district("STALE")
    stale["expected_by"] = "06:00"
    stale["timezone"] = "UTC"
    held = _district(
        "HELD",
        # the default limits (at most 10% deactivated) with no floor: 10 students
        guard={"min_count": 0},
        existing=[builders.existing_student(f"H{i}", order="ENT-HELD") for i in range(10)],
    )
    builders.load(
        conn,
        _district("OK"),
        _district("REJ"),
        held,
        stale,
        _district("RISE"),
        _district("LOW", licenses=2),
        _district("STUCK"),
    )
    conn.commit()

    def run(code: str, data: bytes, age: dt.timedelta) -> UploadStatus:
        received = now - age
        key = f"{code}-{received:%Y%m%dT%H%M%S%fZ}"
        return builders.run(conn, data, code, key=key, received_at=received).status

    assert run("OK", _csv(builders.row("O1")), 2 * hours) == UploadStatus.PROCESSED
    assert run("REJ", _csv(builders.row("R1")), 30 * hours) == UploadStatus.PROCESSED
    assert run("REJ", b"Name,Id\r\nx,y\r\n", 3 * hours) == UploadStatus.REJECTED
    # the baseline (nothing is held before a district's first applied upload), then a hold
    baseline = [builders.row(f"H{i}") for i in range(10)]
    assert run("HELD", _csv(*baseline), 27 * hours) == UploadStatus.PROCESSED
    deactivate = [builders.row(f"H{i}", "D") for i in range(5)]
    assert run("HELD", _csv(*deactivate), 26 * hours) == UploadStatus.HELD
    assert run("STALE", _csv(builders.row("S1")), 5 * DAY) == UploadStatus.PROCESSED
    for i, age in enumerate((4, 3, 2)):  # clean files, then one with half its rows wrong
        assert run("RISE", _csv(builders.row(f"E{i}")), age * DAY) == UploadStatus.PROCESSED
    bad = _csv(builders.row("E9"), builders.row("E8", grade="99"))
    assert run("RISE", bad, 2 * hours) == UploadStatus.PARTIALLY_PROCESSED
    assert run("LOW", _csv(builders.row("L1"), builders.row("L2")), 2 * hours) == (
        UploadStatus.PROCESSED
    )
    # a run took STUCK's file in two hours ago and died before recording its outcome
    [stuck_id] = conn.execute("SELECT district_id FROM districts WHERE code = 'STUCK'").fetchone()
    ensure_upload(
        conn,
        stuck_id,
        f"STUCK-{now - 2 * hours:%Y%m%dT%H%M%S%fZ}",
        file_name="students.csv",
        content_sha256="0" * 64,
        received_at=now - 2 * hours,
        archive_path=None,
    )
    conn.commit()
    return now


FACTS_PARAMS = query_params()
EXPECTED_ORDER = ["STUCK", "REJ", "HELD", "STALE", "RISE", "LOW"]


def test_one_query_reads_every_district_and_ranks_them(
    conn: psycopg.Connection, fleet: dt.datetime
) -> None:
    facts = {f.code: f for f in district_facts(conn)}
    assert sorted(facts) == sorted([*EXPECTED_ORDER, "OK"])
    assert facts["REJ"].last_upload is not None
    assert facts["REJ"].last_upload.status == UploadStatus.REJECTED
    assert facts["REJ"].last_applied_at == fleet - dt.timedelta(hours=30)
    assert facts["HELD"].held == 1 and facts["HELD"].oldest_held_rule == "max_deactivated_pct"
    assert facts["RISE"].error_rates == (0.5, 0.0, 0.0, 0.0)
    assert (facts["LOW"].licenses, facts["LOW"].licenses_used) == (2, 2)
    assert facts["STALE"].expected_by == SIX and facts["OK"].expected_by is None

    status = fleet_status(facts.values(), fleet)
    assert [d.code for d in status.ranked] == EXPECTED_ORDER
    assert [d.state for d in status.ranked] == [
        "failed",
        "rejected",
        "held",
        "stale",
        "errors_rising",
        "licenses_low",
    ]
    stale = status.ranked[3]
    assert [a.state for a in stale.attention] == ["stale", "missing"]
    assert status.counts[OK] == 1 and status.counts["missing"] == 1


def test_the_held_uploads_are_read_through_the_partial_index(
    conn: psycopg.Connection, fleet: dt.datetime
) -> None:
    # the fleet's one query finds held uploads in uploads_held_idx (sql/020), not by reading
    # every upload; the other parts walk each district's newest uploads by its index
    conn.execute("SET enable_seqscan = off")  # the plan of a large table on a small one
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + _FACTS, FACTS_PARAMS).fetchall())
    assert "uploads_held_idx" in plan
    assert "uploads_district_received_idx" in plan


@pytest.fixture
def pg_instance(dagster_pg: str, tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


@dg.op
def claim_fails() -> None:
    raise RuntimeError("SFTP server unreachable")


@dg.job(name=UPLOAD_JOB_NAME)
def failing_upload_job() -> None:
    claim_fails()


@dg.op
def claim_works() -> None:
    pass


@dg.job(name=UPLOAD_JOB_NAME)
def working_upload_job() -> None:
    claim_works()


def _check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def test_the_asset_ranks_the_fleet_and_its_checks_fail_on_the_broken_ones(
    pg_instance: dg.DagsterInstance, db_url: str, fleet: dt.datetime, tmp_path: Path
) -> None:
    # OK's upload run failed and Dagster will retry it: not a failure yet
    retried = failing_upload_job.execute_in_process(
        instance=pg_instance, tags={DISTRICT_TAG: "OK"}, raise_on_error=False
    )
    assert pg_instance.get_run_by_id(retried.run_id).tags[WILL_RETRY_TAG] == "true"
    with psycopg.connect(db_url) as conn:
        assert read_fleet_status(conn, fleet, pg_instance).ranked[0].code == "STUCK"
    # its last attempt failed too (no retry left): OK is failed, after STUCK (failed earlier)
    failed = failing_upload_job.execute_in_process(
        instance=pg_instance,
        tags={DISTRICT_TAG: "OK", MAX_RETRIES_TAG: "0"},
        raise_on_error=False,
    )
    assert pg_instance.get_run_by_id(failed.run_id).tags[WILL_RETRY_TAG] == "false"
    asset = build_fleet_status_asset(clock=lambda: fleet)
    result = dg.materialize(
        [asset], instance=pg_instance, resources={"db": DatabaseResource(url=db_url)}
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["districts"] == 7 and meta["needs_attention"] == 7
    assert meta["failed"] == 2 and meta["ok"] == 0 and meta["licenses_low"] == 1
    top = meta["top"].splitlines()
    assert top[3].startswith("| 2 | OK | failed |") and f"(/runs/{failed.run_id})" in top[3]
    assert [r["district"] for r in meta["ranking"]] == ["STUCK", "OK", *EXPECTED_ORDER[1:]]

    assert not _check(result, NO_FAILED_UPLOADS).passed
    assert _check(result, NO_FAILED_UPLOADS).metadata["districts"].value == 3
    assert not _check(result, NO_STALE_DISTRICTS).passed
    assert not _check(result, NO_LONG_HELD_UPLOADS).passed  # held 26 hours
    assert _check(result, NO_LONG_HELD_UPLOADS).severity == dg.AssetCheckSeverity.WARN
    assert not _check(result, LICENSES_SUFFICIENT).passed

    # a later run of OK that succeeds clears its failure
    later = working_upload_job.execute_in_process(instance=pg_instance, tags={DISTRICT_TAG: "OK"})
    assert later.success
    with psycopg.connect(db_url) as conn:
        status = read_fleet_status(conn, fleet + dt.timedelta(minutes=1), pg_instance)
    assert [d.code for d in status.ranked] == EXPECTED_ORDER

    # `eams fleet status` shows the same, from the same instance (DAGSTER_HOME)
    env = {
        **os.environ,
        "EAMS_DATABASE_URL": db_url,
        "DAGSTER_HOME": str(pg_instance.root_directory),
    }
    done = subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", "fleet", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["dagster_runs_read"] is True
    assert [d["district"] for d in out["ranked"]] == EXPECTED_ORDER
    assert out["counts"] == status.counts
    stale = out["ranked"][3]
    assert (
        stale["states"] == ["stale", "missing"]
        and "expected nights" in stale["attention"][0]["detail"]
    )


def test_the_command_prints_the_ranking_for_people(
    db_url: str, fleet: dt.datetime, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["EAMS_DATABASE_URL"] = db_url
    done = subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", "fleet", "status", "--top", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "6 of 7 districts need attention" in lines[0]
    assert "failed 1, rejected 1, held 1, stale 1, missing 1" in lines[1]
    assert "DAGSTER_HOME is not set" in lines[2]
    rows = [line for line in lines[4:] if line]
    assert rows[0].split()[:2] == ["#", "DISTRICT"]
    assert [r.split()[1] for r in rows[1:] if r[0].isdigit()] == ["STUCK", "REJ", "HELD"]
    assert any("STUCK-" in r for r in rows)


def test_the_code_location_schedules_the_fleet_status_and_the_run_retention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EAMS_FLEET_STATUS_CRON", "*/5 * * * *")
    defs = build_definitions([], resources=default_resources())
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_schedule_def("fleet_status_schedule").cron_schedule == "*/5 * * * *"
    assert defs.resolve_schedule_def("run_retention_daily").cron_schedule == "0 5 * * *"
    job = defs.resolve_job_def(FLEET_JOB_NAME)
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {"fleet_status"}
    assert {
        k.to_user_string()
        for k in defs.resolve_job_def(UPLOAD_JOB_NAME).asset_layer.executable_asset_keys
    } >= {"upload_file"}
