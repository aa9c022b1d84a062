"""Pauses through Dagster, on the real PostgreSQL, loopback SFTP and SMTP servers and a real
Dagster instance: an upload arriving in a district's pause is held (`paused`) and the
district and the operators are told; the first upload after a pause of 21 days or more is
held (`first_after_pause`) whatever its figures, one after a 10-day pause is not; the
missing-upload alert is silent in a pause and does not count the paused days."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from eams_pipeline.db.uploads import get_upload
from eams_pipeline.orchestration.decisions import OUTCOME_TAG
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import (
    SECRET_PASSWORD,
    T0,
    Pipeline,
    assert_no_student_data,
    clean_file,
    district,
    materialization,
    upload_key,
)

DISTRICT_MAIL, OPERATORS_MAIL = "sis-admin@d001.example.org", "ops@eams.example.com"


def _load(pipeline: Pipeline, code: str, **keys: object) -> None:
    builders.load(pipeline.conn, district(code, pipeline.sftp) | keys)
    pipeline.conn.commit()


def check_result(result: dg.ExecuteInProcessResult) -> tuple[bool, dict[str, object], str]:
    """The change_guard check's evaluation of the run: passed, metadata, description."""
    [evaluation] = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    metadata = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    return evaluation.passed, metadata, evaluation.description


def _pause(start: str, end: str) -> dict[str, dt.date]:
    return {"from": dt.date.fromisoformat(start), "to": dt.date.fromisoformat(end)}


def _roster(code: str) -> bytes:
    """Two active students of the district: sent again, it changes nothing."""
    return builders.csv_bytes(
        [builders.row(f"{code}-S{i}", password=SECRET_PASSWORD) for i in (1, 2)]
    )


def _text(mail) -> str:
    return " ".join(mail.get_content().split())


def test_an_upload_in_a_pause_is_held_and_the_district_and_operators_are_told(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    # T0 is 2026-01-14 08:00 UTC, 02:00 in Chicago: in D001's winter pause
    assert pipeline.clock.now == T0 == dt.datetime(2026, 1, 14, 8, tzinfo=dt.UTC)
    _load(pipeline, "D001", pauses=[_pause("2026-01-10", "2026-01-20")])
    request, held = pipeline.sensor_run(instance, "D001", clean_file())
    key = upload_key(request)
    assert held.success  # a held file is not a crash
    outcome = materialization(held, "upload_outcome")
    assert (outcome["status"], outcome["guard_rule"]) == ("held", "paused")
    assert outcome["guard"] == "uploads are paused from 2026-01-10 to 2026-01-20"
    passed, metadata, description = check_result(held)
    assert passed is False and metadata["guard_rule"] == "paused"
    assert "HELD, nothing applied: uploads are paused from 2026-01-10 to 2026-01-20" in (
        description
    )
    assert instance.get_run_by_id(held.run_id).tags[OUTCOME_TAG] == "held"
    upload = get_upload(pipeline.conn, key)
    assert upload.status == "held" and upload.guard_trip["rule"] == "paused"
    assert upload.guard_trip["trips"][0]["received_on"] == "2026-01-14"
    assert builders.students(pipeline.conn, "D001") == {}  # nothing applied

    mails = pipeline.smtp.wait_for(2)
    district_mail = next(m for m in mails if DISTRICT_MAIL in m["To"])
    operators_mail = next(m for m in mails if OPERATORS_MAIL in m["To"])
    assert "HELD for review" in district_mail["Subject"]
    text = _text(district_mail)
    assert "HELD FOR REVIEW: it arrived while uploads of your district are paused" in text
    assert "uploads paused (paused): uploads are paused from 2026-01-10 to 2026-01-20." in text
    assert "HELD" in operators_mail["Subject"] and key in operators_mail["Subject"]
    body = _text(operators_mail)
    assert "paused: uploads are paused from 2026-01-10 to 2026-01-20" in body
    assert f"eams uploads approve {key} --by YOUR_NAME" in body
    for mail in (district_mail, operators_mail):
        assert_no_student_data(mail.get_content() + str(mail["Subject"]))

    # a paused hold is approved like any other
    approved = pipeline.run_upload(
        instance,
        key,
        ops={"upload_outcome": {"config": {"approve_hold": True, "approved_by": "alice"}}},
    )
    assert materialization(approved, "upload_outcome")["status"] == "processed"
    assert len(builders.students(pipeline.conn, "D001")) == 2
    mail = pipeline.smtp.wait_for(3)[-1]
    assert "SUCCESSFUL after review" in mail["Subject"]
    assert (
        "HELD for review because it arrived while uploads of your district are paused, then "
        "APPROVED after review by alice"
    ) in _text(mail)


def test_the_first_upload_after_a_long_pause_is_held_after_a_short_one_not(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    # D001 pauses 25 days, D002 10 days; both sent a file the day before
    _load(pipeline, "D001", pauses=[_pause("2026-01-15", "2026-02-08")])
    _load(pipeline, "D002", pauses=[_pause("2026-01-15", "2026-01-24")])
    for code in ("D001", "D002"):
        _, before = pipeline.sensor_run(instance, code, _roster(code))
        assert materialization(before, "upload_outcome")["status"] == "processed"
    pipeline.smtp.wait_for(2)
    stored = {code: builders.students(pipeline.conn, code) for code in ("D001", "D002")}

    # 2026-02-09 08:00 UTC: 02:00 in Chicago, the first day after D001's pause. The same
    # file again: nothing changes, no figure could trip
    pipeline.clock.now = dt.datetime(2026, 2, 9, 8, tzinfo=dt.UTC)
    request, held = pipeline.sensor_run(instance, "D001", _roster("D001"))
    key = upload_key(request)
    outcome = materialization(held, "upload_outcome")
    assert (outcome["status"], outcome["guard_rule"]) == ("held", "first_after_pause")
    message = "first upload after a pause of 25 days (2026-01-15 to 2026-02-08); please review"
    assert outcome["guard"] == message
    assert check_result(held)[0] is False
    _, short = pipeline.sensor_run(instance, "D002", _roster("D002"))
    assert materialization(short, "upload_outcome")["status"] == "processed"  # 10 days
    assert {code: builders.students(pipeline.conn, code) for code in stored} == stored

    mails = pipeline.smtp.wait_for(5)[2:]
    district_mail = next(m for m in mails if DISTRICT_MAIL in m["To"])
    operators_mail = next(m for m in mails if OPERATORS_MAIL in m["To"])
    text = _text(district_mail)
    assert "HELD FOR REVIEW: it is the first file after a long pause" in text
    assert f"first upload after a long pause (first_after_pause): {message}." in text
    assert f"first_after_pause: {message}" in _text(operators_mail)

    # held again the next night while nobody approved (the newer one supersedes it) ...
    pipeline.clock.advance(24 * 3600)
    request, again = pipeline.sensor_run(instance, "D001", _roster("D001"))
    assert materialization(again, "upload_outcome")["guard_rule"] == "first_after_pause"
    assert get_upload(pipeline.conn, key).status == "superseded"
    # ... until one is approved: an approved hold counts as applied
    approved = pipeline.run_upload(
        instance,
        upload_key(request),
        ops={"upload_outcome": {"config": {"approve_hold": True, "approved_by": "bob"}}},
    )
    assert materialization(approved, "upload_outcome")["status"] == "processed"
    pipeline.clock.advance(24 * 3600)
    _, after = pipeline.sensor_run(instance, "D001", _roster("D001"))
    assert materialization(after, "upload_outcome")["status"] == "processed"


def test_the_missing_upload_alert_is_silent_in_a_pause(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    # D001 expects its file by 01:00 Chicago; T0 (02:00 on 2026-01-14) is in its pause
    _load(
        pipeline,
        "D001",
        expected_by="01:00",
        pauses=[_pause("2026-01-14", "2026-01-20")],
    )
    for day in range(7):  # every paused day: nothing said, nothing sent
        tick = pipeline.tick(instance, "D001", None)
        assert "MISSING" not in str(tick.skip_reason), day
        pipeline.clock.advance(24 * 3600)
    assert pipeline.smtp.messages == []
    assert pipeline.conn.execute("SELECT count(*) FROM district_alerts").fetchone() == (0,)

    # 2026-01-21 02:00 in Chicago, the day after the pause: the 24 hours before 01:00 are
    # one hour of the 21st and 23 before the pause (from 01:00 on the 13th); nothing ever
    # arrived: alerted, since the 13th (not since the 20th)
    assert pipeline.clock.now == dt.datetime(2026, 1, 21, 8, tzinfo=dt.UTC)
    tick = pipeline.tick(instance, "D001", None)
    assert "MISSING UPLOAD" in str(tick.skip_reason)
    [mail] = pipeline.smtp.wait_for(1)
    assert "since 2026-01-13 01:00 CST" in _text(mail)


def test_the_missing_window_skips_the_pause_when_a_file_came_just_before_it(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    _load(pipeline, "D001", expected_by="01:00", pauses=[_pause("2026-01-15", "2026-01-20")])
    # a file on 2026-01-14 at 02:00 Chicago, the day before the pause
    _, result = pipeline.sensor_run(instance, "D001", clean_file())
    assert materialization(result, "upload_outcome")["status"] == "processed"
    sent = len(pipeline.smtp.wait_for(1))
    # 2026-01-21 at 02:00: within 24 unpaused hours of that file: quiet
    pipeline.clock.now = dt.datetime(2026, 1, 21, 8, tzinfo=dt.UTC)
    assert "MISSING" not in str(pipeline.tick(instance, "D001", None).skip_reason)
    # a day later, nothing since: alerted
    pipeline.clock.advance(24 * 3600)
    assert "MISSING UPLOAD" in str(pipeline.tick(instance, "D001", None).skip_reason)
    assert len(pipeline.smtp.wait_for(sent + 1)) == sent + 1
