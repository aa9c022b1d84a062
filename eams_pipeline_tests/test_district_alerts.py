"""District alerts (issue 10 §1): a missing nightly upload and misnamed files in incoming/,
each alerted once. Decisions tested directly; the sensor on the real SFTP and SMTP servers."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from eams_pipeline.io.sftp import RemoteFile
from eams_pipeline.orchestration.alerts import (
    misnamed_files,
    missing_upload,
    track_other_files,
)
from eams_pipeline.orchestration.resources import SmtpResource
from eams_pipeline.orchestration.settle import SensorState, Watched
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import Pipeline, district, upload_key
from eams_pipeline_tests.test_orchestration_pipeline import clean_file, free_port

SIX = dt.time(6, 0)
CHICAGO = "America/Chicago"
# 2026-01-14 06:00 in Chicago (CST, UTC-6) is 12:00 UTC
DUE = dt.datetime(2026, 1, 14, 12, 0, tzinfo=dt.UTC)


def _missing(now: dt.datetime, **kwargs):
    args = {
        "expected_by": SIX,
        "timezone": CHICAGO,
        "last_received": None,
        "file_waiting": False,
    } | kwargs
    return missing_upload(now, **args)


# -- the decisions -------------------------------------------------------------------------


def test_missing_upload_is_due_after_expected_by_in_the_districts_timezone() -> None:
    assert _missing(DUE - dt.timedelta(minutes=1)) is None
    alert = _missing(DUE)
    assert alert is not None and alert.subject == "2026-01-14"
    assert alert.since == DUE - dt.timedelta(hours=24)
    assert _missing(DUE + dt.timedelta(hours=17)).subject == "2026-01-14"  # 23:00 local
    assert _missing(DUE + dt.timedelta(hours=19)) is None  # 01:00 the next local day


def test_no_missing_upload_alert_when_something_arrived_or_already_alerted() -> None:
    assert _missing(DUE, expected_by=None) is None  # no expected_by: no alert
    assert _missing(DUE, last_received=DUE - dt.timedelta(hours=23)) is None
    assert _missing(DUE, last_received=DUE + dt.timedelta(minutes=5)) is None  # came late
    assert _missing(DUE, last_received=DUE - dt.timedelta(hours=25)) is not None
    assert _missing(DUE, file_waiting=True) is None  # students.csv waiting in incoming/
    assert _missing(DUE, alerted={"2026-01-14"}).already_alerted
    again = _missing(DUE + dt.timedelta(days=1), alerted={"2026-01-14"})
    assert again.subject == "2026-01-15" and not again.already_alerted


def test_misnamed_files_settle_by_size_and_are_alerted_once_per_name_and_size() -> None:
    t0 = DUE
    files = [
        RemoteFile("students.csv", 10, 1),
        RemoteFile("students.csv.filepart", 5, 1),
        RemoteFile("Students.CSV", 10, 1),
        RemoteFile("students.xlsx", 99, 1),
    ]
    seen = track_other_files(files, {}, t0)
    assert sorted(seen) == ["Students.CSV", "students.xlsx"]
    assert misnamed_files(seen, t0 + dt.timedelta(seconds=59), 60) == []
    later = t0 + dt.timedelta(seconds=60)
    grown = [RemoteFile("Students.CSV", 10, 1), RemoteFile("students.xlsx", 120, 2)]
    seen = track_other_files(grown, seen, later)
    assert misnamed_files(seen, later, 60) == [("Students.CSV", 10)]
    assert misnamed_files(seen, later, 60, alerted={"Students.CSV|10"}) == []
    state = SensorState(others=seen)
    assert SensorState.from_cursor(state.to_cursor()) == state
    assert seen["students.xlsx"] == Watched(size=120, mtime=2, since=later.timestamp())


# -- the sensor, on the real servers -------------------------------------------------------


def _tick(pipeline: Pipeline, instance: dg.DagsterInstance, cursor: str | None, **res):
    result = pipeline.tick(instance, "D001", cursor, **res)
    assert isinstance(result, dg.SensorResult)
    return result


def test_a_missing_upload_is_alerted_once_a_day_to_contacts_and_operators(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    # T0 is 2026-01-14 08:00 UTC = 02:00 in Chicago; D001 expects its file by 01:00
    builders.load(pipeline.conn, district("D001", pipeline.sftp) | {"expected_by": "01:00"})
    pipeline.conn.commit()
    first = _tick(pipeline, instance, None)
    assert "MISSING UPLOAD" in str(first.skip_reason)
    [mail] = pipeline.smtp.wait_for(1)
    assert "no students.csv received" in mail["Subject"] and "D001" in mail["Subject"]
    assert mail["To"] == "sis-admin@d001.example.org, it@d001.example.org"
    assert mail["Cc"] == "ops@eams.example.com, oncall@eams.example.com"
    body = " ".join(mail.get_content().split())
    assert "since 2026-01-13 01:00 CST" in body  # in the district's time

    second = _tick(pipeline, instance, first.cursor)  # the next tick: not again
    assert "already alerted" in str(second.skip_reason)
    assert _tick(pipeline, instance, None).skip_reason  # a reset cursor: still not again
    assert len(pipeline.smtp.messages) == 1
    assert pipeline.tick(instance, "D002", None).skip_reason  # D002 has no expected_by
    assert len(pipeline.smtp.messages) == 1

    # the next day, still nothing: one more alert
    pipeline.clock.advance(24 * 3600)
    _tick(pipeline, instance, second.cursor)
    assert len(pipeline.smtp.wait_for(2)) == 2
    _tick(pipeline, instance, second.cursor)
    assert len(pipeline.smtp.messages) == 2

    # a file arrives and is processed: no alert the day after
    _request, result = pipeline.sensor_run(instance, "D001", clean_file())
    assert result.success
    emails = len(pipeline.smtp.wait_for(3))  # the upload's outcome email
    pipeline.clock.advance(23 * 3600)
    quiet = _tick(pipeline, instance, None)
    assert "MISSING" not in str(quiet.skip_reason)
    assert len(pipeline.smtp.messages) == emails


def test_a_misnamed_file_is_alerted_once_per_name_and_size(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    pipeline.upload("D001", b"School Code,...", name="Students.CSV")
    pipeline.upload("D001", b"partial", name="students.csv.filepart")
    t1 = _tick(pipeline, instance, None)
    assert "MISNAMED" not in str(t1.skip_reason)  # not settled yet
    pipeline.clock.advance(pipeline.settle)
    t2 = _tick(pipeline, instance, t1.cursor)
    assert "MISNAMED FILE: incoming/Students.CSV (15 bytes)" in str(t2.skip_reason)
    [mail] = pipeline.smtp.wait_for(1)
    assert mail["To"] == "sis-admin@d001.example.org, it@d001.example.org"
    body = " ".join(mail.get_content().split())
    assert "only a file named exactly students.csv is processed" in body.lower()
    assert "found incoming/Students.CSV (15 bytes)" in body

    pipeline.clock.advance(pipeline.settle)
    t3 = _tick(pipeline, instance, t2.cursor)
    assert "MISNAMED" not in str(t3.skip_reason)
    assert len(pipeline.smtp.messages) == 1

    # a new file, and the same name with another size: one email each, SMTP down first
    pipeline.upload("D001", b"x" * 20, name="Students.CSV")
    pipeline.upload("D001", b"PK\x03\x04", name="students.xlsx")
    t4 = _tick(pipeline, instance, t3.cursor)
    pipeline.clock.advance(pipeline.settle)
    down = SmtpResource(port=free_port(), timeout_seconds=2)
    t5 = _tick(pipeline, instance, t4.cursor, smtp=down)
    assert "alert NOT sent" in str(t5.skip_reason)
    assert len(pipeline.smtp.messages) == 1
    t6 = _tick(pipeline, instance, t5.cursor)  # SMTP back: both sent now
    mails = pipeline.smtp.wait_for(3)
    subjects = sorted(m["Subject"] for m in mails[1:])
    assert "Students.CSV" in subjects[0] and "students.xlsx" in subjects[1]
    _tick(pipeline, instance, t6.cursor)
    assert len(pipeline.smtp.messages) == 3


def test_an_alert_does_not_keep_the_sensor_from_requesting_the_run(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    pipeline.upload("D001", b"junk", name="students_0114.csv")
    pipeline.upload("D001", clean_file())
    t1 = _tick(pipeline, instance, None)
    pipeline.clock.advance(pipeline.settle)
    down = SmtpResource(port=free_port(), timeout_seconds=2)
    t2 = pipeline.tick(instance, "D001", t1.cursor, smtp=down)
    assert upload_key(pipeline.request(t2))  # the run is requested all the same
