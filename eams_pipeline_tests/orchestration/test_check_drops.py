"""Check drops through Dagster, on the real PostgreSQL, SFTP (asyncssh) and SMTP (aiosmtpd)
servers: a district's check/students.csv is requested by its sensor like an upload, run by
``check_upload`` as the engine's dry run (nothing applied, hashed or stored), reported in
reports/ and emailed as a "check result"; it never blocks nor supersedes a real upload."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
from typing import ClassVar

import dagster as dg
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from eams_pipeline.core.error_file import HEADER as REPORT_HEADER
from eams_pipeline.core.guard import DEFAULT_THRESHOLDS
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.db.districts import lock_district
from eams_pipeline.db.uploads import get_upload
from eams_pipeline.db.usernames import USERNAME_LOCK_ALL
from eams_pipeline.orchestration.check_job import CHECK_JOB_NAME
from eams_pipeline.orchestration.decisions import OUTCOME_TAG
from eams_pipeline.orchestration.jobs import UPLOAD_JOB_NAME
from eams_pipeline.orchestration.partitions import DISTRICT_TAG, UPLOAD_KEY_TAG
from eams_pipeline.orchestration.resources import DatabaseResource, EngineResource
from eams_pipeline.orchestration.upload_retention_job import build_retention_job
from eams_pipeline.services.process import Engine
from eams_pipeline_tests import builders
from eams_pipeline_tests.cli_runner import eams
from eams_pipeline_tests.orchestration_env import Pipeline

PASSWORD = "Check-Pw-7731!"
IDS = [f"STU-{i:05d}" for i in range(10)]
NEW_OK, NEW_BAD = "STU-90001", "STU-90002"


class CountingHasher(PasswordHasher):
    """The real argon2id hasher, counting the passwords it is given."""

    hashed: ClassVar[list[int]] = []

    def hash_many(self, passwords: list[str]) -> list[str]:
        CountingHasher.hashed.append(len(passwords))
        return super().hash_many(passwords)


class CountingEngine(EngineResource):
    """The engine as configured, with the counting hasher."""

    def get(self) -> Engine:
        engine = super().get()
        return dataclasses.replace(engine, hasher=CountingHasher(engine.hasher.settings))


def state(conn: psycopg.Connection) -> dict[str, object]:
    """What a check must leave as it was: the students (data, status, order, password
    hash), their history, the password hash cache, the licenses used, the version."""
    conn.commit()
    out = {
        "students": builders.students(conn, "D001"),
        "history": conn.execute("SELECT count(*) FROM student_history").fetchone()[0],
        "cache": conn.execute("SELECT count(*) FROM password_hash_cache").fetchone()[0],
        "used": conn.execute("SELECT sum(used) FROM orders").fetchone()[0],
        "version": conn.execute(
            "SELECT students_version FROM districts WHERE code = 'D001'"
        ).fetchone()[0],
    }
    conn.commit()
    return out


def baseline(pipeline: Pipeline, instance: dg.DagsterInstance) -> str:
    """D001's guard at the default percentages with a floor of 1, and a first applied upload
    of 10 students (the guard's baseline). Returns its key."""
    conn = pipeline.conn
    conn.execute(
        "UPDATE districts SET guard = %s WHERE code = 'D001'",
        (json.dumps({**DEFAULT_THRESHOLDS, "min_count": 1}),),
    )
    conn.commit()
    rows = [builders.row(s, password=PASSWORD) for s in IDS]
    request, result = pipeline.sensor_run(instance, "D001", builders.csv_bytes(rows))
    assert result.success
    assert get_upload(conn, request.tags[UPLOAD_KEY_TAG]).status == "processed"
    pipeline.smtp.wait_for(1)
    pipeline.clock.advance(3600)
    return request.tags[UPLOAD_KEY_TAG]


def settle(pipeline: Pipeline, instance: dg.DagsterInstance, code: str = "D001") -> dg.SensorResult:
    """Two ticks of the district sensor, the settle window apart: the second requests."""
    first = pipeline.tick(instance, code, None)
    assert isinstance(first, dg.SensorResult) and not first.run_requests
    pipeline.clock.advance(pipeline.settle)
    second = pipeline.tick(instance, code, first.cursor)
    assert isinstance(second, dg.SensorResult), second
    return second


def dispatched(pipeline: Pipeline, count: int) -> list[dg.RunRequest]:
    result = pipeline.dispatch()
    assert isinstance(result, dg.SensorResult), result
    assert len(result.run_requests) == count, result
    return list(result.run_requests)


def report_rows(pipeline: Pipeline, key: str) -> list[list[str]]:
    path = pipeline.user_dir("D001") / "reports" / f"students_check_{key}.csv"
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def test_a_check_drop_with_row_errors_and_a_guard_trip_applies_nothing_and_emails_its_result(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    conn = pipeline.conn
    first_key = baseline(pipeline, instance)
    before = state(conn)
    rows = [builders.row(s, "D", password="") for s in IDS[:6]]  # 6 of 10: the guard trips
    rows.append(builders.row(IDS[6], grade="15", password=""))  # INVALID_GRADE
    rows.append(builders.row(NEW_BAD, school_code="999", password=PASSWORD))  # SCHOOL_NOT_FOUND
    rows.append(builders.row(NEW_OK, password=PASSWORD))  # would be added (and hashed)
    rows += [builders.row(s, password="") for s in IDS[7:]]
    pipeline.check("D001", builders.csv_bytes(rows))

    tick = settle(pipeline, instance)
    assert "requested check " in str(tick.skip_reason), tick
    [request] = dispatched(pipeline, 1)
    key = request.tags[UPLOAD_KEY_TAG]
    assert request.job_name == CHECK_JOB_NAME and request.partition_key is None
    assert request.tags["eams/kind"] == "check" and request.tags[DISTRICT_TAG] == "D001"

    CountingHasher.hashed.clear()
    result = pipeline.launch(instance, request, engine=CountingEngine())
    assert result.success

    # nothing applied, hashed or stored
    assert state(conn) == before
    assert CountingHasher.hashed == []
    assert not list(pipeline.archive_dir.rglob(f"{key}*"))
    assert pipeline.files("D001", "check") == []
    assert f"students_{key}.csv" not in pipeline.files("D001", "processed")  # raw file gone

    # the report: the error file's columns, every error, no password
    report = report_rows(pipeline, key)
    assert tuple(report[0]) == REPORT_HEADER
    assert sorted((r[0], r[1], r[3]) for r in report[1:]) == [
        ("8", IDS[6], "INVALID_GRADE"),
        ("9", NEW_BAD, "SCHOOL_NOT_FOUND"),
    ]
    assert PASSWORD not in json.dumps(report)

    # recorded as a check, with the counts, the codes and the guard's verdict
    row = get_upload(conn, key)
    assert (row.status, row.checked_as) == ("checked", "held")
    assert row.counts == {
        "rows": 12,
        "added": 1,
        "activated": 0,
        "deactivated": 6,
        "updated": 0,
        "unchanged": 3,
        "errors": 2,
    }
    assert row.error_codes == {"INVALID_GRADE": 1, "SCHOOL_NOT_FOUND": 1}
    assert row.guard_trip["rule"] == "max_deactivated_pct"
    assert row.error_file == f"/reports/students_check_{key}.csv"
    stored_errors = conn.execute(
        "SELECT count(*) FROM upload_errors WHERE upload_id = %s", (row.upload_id,)
    ).fetchone()[0]
    assert stored_errors == 0  # the lines name students: only in the report
    assert get_upload(conn, first_key).status == "processed"

    # the check result email: counts, the guard's verdict, the codes, no student data
    [*_, message] = pipeline.smtp.wait_for(2)
    assert len(pipeline.smtp.messages) == 2
    subject, body = message["Subject"], message.get_content()
    assert subject.startswith("eAMS check result: the file would be HELD for review, nothing")
    assert key in subject
    assert sorted(message["To"].split(", ")) == [
        "it@d001.example.org",
        "sis-admin@d001.example.org",
    ]
    assert "NOTHING was applied" in body
    assert "Change guard: it WOULD HOLD the file for review:" in body
    said = " ".join(body.split())
    assert "max_deactivated_pct): the file deactivates 6 of 10 active students, 60%" in said
    for line in (
        "Students added                         1",
        "Students deactivated                   6",
        "Rows with errors (not applied)         2",
        "INVALID_GRADE                          1",
        "SCHOOL_NOT_FOUND                       1",
    ):
        assert line in body, body
    assert f"/reports/students_check_{key}.csv" in body
    for value in (PASSWORD, *IDS, NEW_OK, NEW_BAD):
        assert value not in body

    # in Dagster: a run of check_upload, tagged, that materialized no upload asset
    run = instance.get_run_by_id(result.run_id)
    assert run.job_name == CHECK_JOB_NAME
    assert {k: run.tags.get(k) for k in ("eams/kind", OUTCOME_TAG, "eams/checked_as")} == {
        "eams/kind": "check",
        OUTCOME_TAG: "checked",
        "eams/checked_as": "held",
    }
    assert result.get_asset_materialization_events() == []
    outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    checked = next(e for e in outputs if e.step_key == "check_file")
    shown = {k: getattr(v, "value", v) for k, v in checked.event_specific_data.metadata.items()}
    assert (shown["checked_as"], shown["deactivated"], shown["errors"]) == ("held", 6, 2)
    for value in (PASSWORD, *IDS, NEW_OK, NEW_BAD):  # no student data in Dagster's log
        assert value not in json.dumps(shown, default=str)
    latest = instance.get_latest_materialization_event(dg.AssetKey("upload_outcome"))
    assert latest.asset_materialization.partition == "D001"
    assert latest.asset_materialization.metadata["upload_key"].value == first_key

    # eams uploads list shows it
    listed = eams(
        "uploads",
        "list",
        "--district",
        "D001",
        cwd=pipeline.archive_dir.parent,
        url=pipeline.db_url,
    )
    assert listed.returncode == 0, listed.stderr
    [line] = [x for x in listed.stdout.splitlines() if x.startswith(key)]
    assert "checked" in line and "would be held: max_deactivated_pct" in line
    shown = eams("uploads", "show", key, cwd=pipeline.archive_dir.parent, url=pipeline.db_url)
    assert shown.returncode == 0, shown.stderr
    assert "a check drop: nothing applied; as an upload it would be held" in shown.stdout
    assert "the change guard WOULD HOLD it:" in shown.stdout
    assert "HELD by" not in shown.stdout and "eams uploads approve" not in shown.stdout

    # an operator's re-execution neither checks again nor emails again
    again = pipeline.launch(instance, request)
    assert again.success
    assert len(pipeline.smtp.messages) == 2
    assert state(conn) == before


def test_a_clean_check_publishes_a_header_only_report(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    conn = pipeline.conn
    before = state(conn)
    pipeline.check("D001", builders.csv_bytes([builders.row(NEW_OK, password=PASSWORD)]))
    settle(pipeline, instance)
    [request] = dispatched(pipeline, 1)
    key = request.tags[UPLOAD_KEY_TAG]
    assert pipeline.launch(instance, request).success

    assert report_rows(pipeline, key) == [list(REPORT_HEADER)]
    assert state(conn) == before  # the student was not added
    row = get_upload(conn, key)
    assert (row.status, row.checked_as, row.counts["added"]) == ("checked", "processed", 1)
    [message] = pipeline.smtp.wait_for(1)
    body = " ".join(message.get_content().split())
    assert message["Subject"].startswith("eAMS check result: no errors, nothing applied:")
    assert "processed SUCCESSFULLY: every row would be applied" in body
    assert "Change guard: it would let the file through." in body
    assert "It holds only the header line: the file has no errors." in body


def test_a_check_and_an_upload_of_the_same_night_neither_block_nor_supersede_each_other(
    pipeline: Pipeline, instance: dg.DagsterInstance, db_url: str
) -> None:
    conn = pipeline.conn
    baseline(pipeline, instance)
    held_rows = [builders.row(s, "D", password="") for s in IDS[:6]]
    held_request, _ = pipeline.sensor_run(instance, "D001", builders.csv_bytes(held_rows))
    held_key = held_request.tags[UPLOAD_KEY_TAG]
    assert get_upload(conn, held_key).status == "held"
    pipeline.clock.advance(3600)

    nightly = builders.csv_bytes(
        [builders.row(NEW_OK, password=PASSWORD), *(builders.row(s, password="") for s in IDS)]
    )
    pipeline.upload("D001", nightly)
    pipeline.check("D001", nightly)
    tick = settle(pipeline, instance)
    assert "requested upload " in str(tick.skip_reason) and "check " in str(tick.skip_reason)
    upload_request, check_request = dispatched(pipeline, 2)  # in the order recorded
    assert (upload_request.job_name, check_request.job_name) == (UPLOAD_JOB_NAME, CHECK_JOB_NAME)
    upload_key, check_key = (r.tags[UPLOAD_KEY_TAG] for r in (upload_request, check_request))
    assert upload_key != check_key  # taken in the same tick, a microsecond apart

    # an upload applying holds the district's lock: the check does not wait for it
    locker = psycopg.connect(db_url)
    try:
        lock_district(locker, "D001")
        locker.execute("SELECT pg_advisory_xact_lock(%s, %s)", USERNAME_LOCK_ALL)
        impatient = DatabaseResource(url=make_conninfo(db_url, options="-c lock_timeout=3000"))
        assert pipeline.launch(instance, check_request, db=impatient).success
    finally:
        locker.close()
    assert get_upload(conn, check_key).status == "checked"
    assert get_upload(conn, held_key).status == "held"  # the check superseded nothing
    assert NEW_OK not in builders.students(conn, "D001")

    assert pipeline.launch(instance, upload_request).success
    assert get_upload(conn, upload_key).status == "processed"
    assert NEW_OK in builders.students(conn, "D001")
    assert get_upload(conn, check_key).status == "checked"  # nor was it superseded
    assert get_upload(conn, held_key).status == "superseded"  # by the upload, as always
    subjects = [m["Subject"] for m in pipeline.smtp.messages]
    assert sum("check result" in s for s in subjects) == 1
    assert any("SUCCESSFUL" in s and upload_key in s for s in subjects)


def test_retention_removes_a_checks_raw_file_and_in_time_its_report(
    pipeline: Pipeline, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAMS_PROCESSED_RETENTION_DAYS", "3")
    pipeline.check("D001", builders.csv_bytes([builders.row(NEW_OK, grade="15")]))
    settle(pipeline, instance)
    [request] = dispatched(pipeline, 1)
    key = request.tags[UPLOAD_KEY_TAG]
    assert pipeline.launch(instance, request).success
    raw, report = f"students_{key}.csv", f"students_check_{key}.csv"
    assert pipeline.files("D001", "processed") == [raw]  # kept 3 days, like an upload's
    received = get_upload(pipeline.conn, key).received_at

    def retention(now: dt.datetime) -> dict[str, list[str]]:
        result = build_retention_job(clock=lambda: now).execute_in_process(
            resources=pipeline.resources()
        )
        assert result.success
        return result.output_for_node("enforce_retention")

    assert retention(received + dt.timedelta(days=1))["processed"] == []
    assert retention(received + dt.timedelta(days=4))["processed"] == [f"/processed/{raw}"]
    assert pipeline.files("D001", "processed") == []
    assert pipeline.files("D001", "reports") == [report]
    old = (received - dt.timedelta(days=100)).timestamp()
    os.utime(pipeline.user_dir("D001") / "reports" / report, (old, old))
    assert retention(received + dt.timedelta(days=5))["reports"] == [f"/reports/{report}"]
    assert pipeline.files("D001", "reports") == []


def test_a_check_is_never_run_as_an_upload(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    pipeline.check("D001", builders.csv_bytes([builders.row(NEW_OK, password=PASSWORD)]))
    settle(pipeline, instance)
    [request] = dispatched(pipeline, 1)
    key = request.tags[UPLOAD_KEY_TAG]
    assert pipeline.launch(instance, request).success
    before = state(pipeline.conn)
    by_hand = pipeline.run_upload(instance, key, raise_on_error=False)  # upload_job, by hand
    assert not by_hand.success
    [failure] = [e for e in by_hand.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "is a check drop, not an upload" in failure.event_specific_data.error.message
    assert state(pipeline.conn) == before
    assert get_upload(pipeline.conn, key).status == "checked"


def test_a_check_of_a_file_that_would_be_rejected_quotes_its_error(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    bad = builders.csv_bytes([builders.row(NEW_OK)]).replace(b"Student ID", b"StudentID", 1)
    pipeline.check("D001", bad)
    settle(pipeline, instance)
    [request] = dispatched(pipeline, 1)
    key = request.tags[UPLOAD_KEY_TAG]
    assert pipeline.launch(instance, request).success
    row = get_upload(pipeline.conn, key)
    assert (row.status, row.checked_as, row.error_codes) == (
        "checked",
        "rejected",
        {"HEADER_MISMATCH": 1},
    )
    [line] = report_rows(pipeline, key)[1:]
    assert (line[0], line[1], line[3]) == ("1", "", "HEADER_MISMATCH")
    [message] = pipeline.smtp.wait_for(1)
    body = " ".join(message.get_content().split())
    assert message["Subject"].startswith("eAMS check result: the file would be REJECTED,")
    assert f"Error: HEADER_MISMATCH: {' '.join(line[4].split())}" in body
    assert "Change guard: not evaluated (the file would be rejected)." in body
