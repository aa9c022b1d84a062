"""District alerts: a missing nightly upload, alerted once a day, and the stray (misnamed)
files of incoming/, in one digest a day at most. Decisions tested directly; the sensor on
the real SFTP and SMTP servers."""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg

from eams_pipeline.core.alert_rules import (
    MAX_TRACKED,
    mark_reported,
    missing_upload,
    settled_stray,
    track_other_files,
    unreported,
)
from eams_pipeline.core.remote_files import RemoteFile
from eams_pipeline.core.settle import Other, SensorState
from eams_pipeline.orchestration.resources import SmtpResource
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import (
    Pipeline,
    clean_file,
    district,
    free_port,
    upload_key,
)

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


def test_stray_files_settle_and_are_reported_once_as_they_are() -> None:
    t0 = DUE
    files = [
        RemoteFile("students.csv", 10, 1),
        RemoteFile("students.csv.filepart", 5, 1),
        RemoteFile("Students.CSV", 10, 1),
        RemoteFile("students.xlsx", 99, 1),
    ]
    seen = track_other_files(files, {}, t0)
    assert len(seen) == 2 and all(len(key) == 16 for key in seen)  # names are not keys
    assert settled_stray(files, seen, t0 + dt.timedelta(seconds=59), 60) == []
    later = t0 + dt.timedelta(seconds=60)
    grown = [RemoteFile("Students.CSV", 10, 1), RemoteFile("students.xlsx", 120, 2)]
    seen = track_other_files(grown, seen, later)
    settled = settled_stray(grown, seen, later, 60)
    assert [f.name for f in settled] == ["Students.CSV"]
    seen = mark_reported(seen, settled)
    assert unreported(settled, seen) == []
    state = SensorState(others=seen, digest_day="2026-01-14")
    assert SensorState.from_cursor(state.to_cursor()) == state
    # a reported file that changes is new again
    changed = [RemoteFile("Students.CSV", 11, 3)]
    seen = track_other_files(changed, seen, later)
    assert unreported(changed, seen) == changed
    assert list(seen.values()) == [Other(size=11, mtime=3, since=later.timestamp())]


def test_the_cursor_tracks_a_bounded_number_of_stray_files() -> None:
    files = [RemoteFile(f"junk-{i:04d}-" + "x" * 200, 1, 1) for i in range(MAX_TRACKED * 3)]
    seen = track_other_files(files, {}, DUE)
    assert len(seen) == MAX_TRACKED
    assert len(SensorState(others=seen).to_cursor()) < 100 * MAX_TRACKED


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


def test_stray_files_get_one_digest_a_day_only_when_one_is_new(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    pipeline.upload("D001", b"School Code,...", name="Students.CSV")
    pipeline.upload("D001", b"partial", name="students.csv.filepart")
    t1 = _tick(pipeline, instance, None)
    assert "MISNAMED" not in str(t1.skip_reason)  # not settled yet
    pipeline.clock.advance(pipeline.settle)
    t2 = _tick(pipeline, instance, t1.cursor)
    assert "MISNAMED FILES: 1 file in incoming/ not students.csv: Students.CSV" in str(
        t2.skip_reason
    )
    [mail] = pipeline.smtp.wait_for(1)
    assert mail["To"] == "sis-admin@d001.example.org, it@d001.example.org"
    assert "1 file in incoming/ not processed" in mail["Subject"]
    body = " ".join(mail.get_content().split())
    assert "only a file named exactly students.csv is processed" in body.lower()
    assert "incoming/Students.CSV (15 bytes)" in body
    assert "filepart" not in body

    pipeline.clock.advance(pipeline.settle)
    t3 = _tick(pipeline, instance, t2.cursor)
    assert "MISNAMED" not in str(t3.skip_reason)  # reported as it is: nothing to say
    assert len(pipeline.smtp.messages) == 1

    # new files the same day: no second email that day (SMTP even down), one the next day
    pipeline.upload("D001", b"x" * 20, name="Students.CSV")
    pipeline.upload("D001", b"PK\x03\x04", name="students.xlsx")
    t4 = _tick(pipeline, instance, t3.cursor)
    pipeline.clock.advance(pipeline.settle)
    down = SmtpResource(port=free_port(), timeout_seconds=2)
    t5 = _tick(pipeline, instance, t4.cursor, smtp=down)
    assert "the next one tomorrow" in str(t5.skip_reason)
    assert len(pipeline.smtp.messages) == 1
    reset = _tick(pipeline, instance, None)  # a reset cursor watches them settle again
    pipeline.clock.advance(pipeline.settle)
    again = _tick(pipeline, instance, reset.cursor)
    assert "today's digest was sent already" in str(again.skip_reason)
    assert len(pipeline.smtp.messages) == 1

    pipeline.clock.advance(24 * 3600)  # the next local day; SMTP down first
    t6 = _tick(pipeline, instance, t5.cursor, smtp=down)
    assert "alert NOT sent" in str(t6.skip_reason)
    t7 = _tick(pipeline, instance, t6.cursor)  # SMTP back: one digest of both
    mails = pipeline.smtp.wait_for(2)
    assert len(mails) == 2 and "2 files in incoming/ not processed" in mails[1]["Subject"]
    body = " ".join(mails[1].get_content().split())
    assert "incoming/Students.CSV (20 bytes)" in body and "incoming/students.xlsx (4 bytes)" in body
    pipeline.clock.advance(24 * 3600)  # the day after, nothing new: nothing sent
    _tick(pipeline, instance, t7.cursor)
    _tick(pipeline, instance, None)  # a reset cursor does not report them again either
    assert len(pipeline.smtp.messages) == 2


def test_a_flood_of_stray_files_is_one_digest_and_a_short_reason(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    for i in range(300):
        pipeline.upload("D001", b"junk", name=f"junk-{i:03d}-{'y' * 100}.csv")
    pipeline.upload("D001", clean_file())
    t1 = _tick(pipeline, instance, None)
    pipeline.clock.advance(pipeline.settle)
    t2 = pipeline.tick(instance, "D001", t1.cursor)
    assert pipeline.request(t2).partition_key  # students.csv beside them is requested
    t3 = _tick(pipeline, instance, t1.cursor)  # the same tick, without the request
    [mail] = pipeline.smtp.wait_for(1)
    assert "300 files in incoming/ not processed" in mail["Subject"]
    body = mail.get_content()
    assert body.count("incoming/junk-") == 20 and "... and 280 more files" in body
    assert len(str(t3.skip_reason)) < 1000
    assert len(t3.cursor) < 12_000
    recorded = pipeline.conn.execute(
        "SELECT kind, count(*) FROM district_alerts GROUP BY kind ORDER BY kind"
    ).fetchall()
    assert recorded == [("misnamed_digest", 1), ("misnamed_file", 100)]
    for _ in range(3):
        pipeline.clock.advance(pipeline.settle)
        _tick(pipeline, instance, t3.cursor)
    assert len(pipeline.smtp.messages) == 1


def test_a_name_that_is_not_utf8_is_a_stray_file_and_students_csv_is_still_requested(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    incoming = os.fsencode(pipeline.user_dir("D001") / "incoming")
    with open(incoming + b"/Sch\xfclerliste.csv", "wb") as f:  # Latin-1, as OpenSSH passes it
        f.write(b"junk")
    t1 = _tick(pipeline, instance, None)
    pipeline.clock.advance(pipeline.settle)
    t2 = _tick(pipeline, instance, t1.cursor)
    reason = t2.skip_reason.skip_message
    assert "MISNAMED FILES: 1 file in incoming/ not students.csv: Sch\\xfclerliste.csv" in reason
    assert reason.isascii()
    [mail] = pipeline.smtp.wait_for(1)
    body = " ".join(mail.get_content().split())
    assert "incoming/Sch\\xfclerliste.csv (4 bytes)" in body
    subjects = {r[0] for r in pipeline.conn.execute("SELECT subject FROM district_alerts")}
    assert "Sch\\xfclerliste.csv|4" in subjects

    pipeline.upload("D001", clean_file())  # students.csv beside it is requested and run
    t3 = _tick(pipeline, instance, t2.cursor)
    pipeline.clock.advance(pipeline.settle)
    request = pipeline.request(pipeline.tick(instance, "D001", t3.cursor))
    stat = (int(request.tags["eams/file_size"]), int(request.tags["eams/file_mtime"]))
    assert pipeline.run_upload(instance, upload_key(request), stat=stat).success
    assert os.listdir(incoming) == [b"Sch\xfclerliste.csv"]  # left alone
    assert len(pipeline.smtp.wait_for(2)) == 2  # the upload's outcome email, no new digest


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
