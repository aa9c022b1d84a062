"""The upload job end to end and the district sensors, against real PostgreSQL, SFTP
(asyncssh, chroot per district) and SMTP (aiosmtpd) servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncssh
import dagster as dg
import pytest

from eams_pipeline.core.names import UploadRef
from eams_pipeline.core.settle import SensorState
from eams_pipeline.db.uploads import get_upload
from eams_pipeline.io.sftp import SftpAuthError, SftpHostKeyError
from eams_pipeline.orchestration.failure_sensor import build_operator_alert_sensor
from eams_pipeline.orchestration.partitions import (
    DISTRICT_TAG,
    DISTRICTS,
    UPLOAD_KEY_TAG,
    build_district_partitions_sensor,
    upload_run_config,
)
from eams_pipeline.orchestration.resources import ArchiveResource, SmtpResource
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import (
    SECRET_PASSWORD,
    SID_A,
    SID_B,
    Pipeline,
    assert_no_student_data,
    clean_file,
    file_with_errors,
    free_port,
    materialization,
    upload_key,
)

# -- sensors -------------------------------------------------------------------------------


def test_sensor_waits_for_the_file_to_settle_then_requests_one_run_per_upload(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    path = pipeline.upload("D001", clean_file()[:40])  # still being written
    t1 = pipeline.tick(instance, "D001", None)
    assert isinstance(t1, dg.SensorResult) and not t1.run_requests
    assert "settling" in str(t1.skip_reason)

    path.write_bytes(clean_file())  # the upload grew
    pipeline.clock.advance(pipeline.settle)
    t2 = pipeline.tick(instance, "D001", t1.cursor)
    assert isinstance(t2, dg.SensorResult) and not t2.run_requests

    pipeline.clock.advance(pipeline.settle)
    t3 = pipeline.tick(instance, "D001", t2.cursor)
    # the tick records the request; the upload requests sensor asks for the run
    request = pipeline.request(t3)
    key = upload_key(request)  # tag, run config and partition (the district) agree
    assert f"requested upload {key}" in str(t3.skip_reason)
    assert request.run_key == key
    assert UploadRef.parse(key).district == "D001" and request.partition_key == "D001"
    assert request.tags[DISTRICT_TAG] == "D001" and request.tags[UPLOAD_KEY_TAG] == key
    assert request.tags["eams/requested_by"] == "sftp_D001"
    assert request.run_config == {"resources": {"upload_ref": {"config": {"key": key}}}}
    assert request.tags["eams/file_size"] == str(len(clean_file()))
    # the district's partition key (added if missing; a partition per district, not per upload)
    [add] = pipeline.last_dispatch.dynamic_partitions_requests
    assert add.partitions_def_name == DISTRICTS.name and list(add.partition_keys) == ["D001"]

    pipeline.clock.advance(pipeline.settle)
    t4 = pipeline.tick(instance, "D001", t3.cursor)  # not claimed yet: no second request
    assert isinstance(t4, dg.SensorResult) and not t4.run_requests
    assert "already requested" in str(t4.skip_reason)
    assert isinstance(pipeline.dispatch(), dg.SkipReason)  # nothing more to run

    stat = (int(request.tags["eams/file_size"]), int(request.tags["eams/file_mtime"]))
    assert pipeline.run_upload(instance, key, stat=stat).success
    assert pipeline.files("D001", "incoming") == []

    t5 = pipeline.tick(instance, "D001", t4.cursor)
    assert isinstance(t5, dg.SensorResult) and "no incoming/students.csv" in str(t5.skip_reason)

    pipeline.upload("D001", clean_file(grade="6"))  # the next night
    pipeline.clock.advance(3600)
    t6 = pipeline.tick(instance, "D001", t5.cursor)
    pipeline.clock.advance(pipeline.settle)
    second = pipeline.request(pipeline.tick(instance, "D001", t6.cursor))
    assert upload_key(second) != key and second.partition_key == "D001"


def test_sensor_ignores_filepart_and_other_files(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    pipeline.upload("D001", b"partial", name="students.csv.filepart")
    pipeline.upload("D001", b"hello", name="readme.txt")
    cursor = None
    for _ in range(3):
        result = pipeline.tick(instance, "D001", cursor)
        assert isinstance(result, dg.SensorResult) and not result.run_requests
        cursor = result.cursor
        pipeline.clock.advance(pipeline.settle)
    assert "upload in progress: students.csv.filepart" in str(result.skip_reason)
    assert pipeline.files("D001", "incoming") == ["readme.txt", "students.csv.filepart"]


def test_sensor_skips_a_tick_when_the_server_is_unreachable(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    pipeline.upload("D001", clean_file())
    pipeline.conn.execute("UPDATE districts SET sftp_port = %s WHERE code = 'D001'", (free_port(),))
    pipeline.conn.commit()
    result = pipeline.tick(instance, "D001", None)
    assert isinstance(result, dg.SkipReason)
    assert "unreachable" in str(result.skip_message)


def test_sensor_tick_fails_on_a_wrong_password(
    pipeline: Pipeline, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAMS_TEST_SFTP_D001_PASSWORD", "wrong-password")
    with pytest.raises(SftpAuthError, match="authentication failed"):
        pipeline.tick(instance, "D001", None)


def test_sensor_tick_fails_on_a_wrong_host_key(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    pipeline.conn.execute(
        "UPDATE districts SET sftp_host_key = %s WHERE code = 'D001'", (other.strip(),)
    )
    pipeline.conn.commit()
    with pytest.raises(SftpHostKeyError, match="host key mismatch"):
        pipeline.tick(instance, "D001", None)


def test_nightly_district_sensor_waits_for_the_processing_time(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    # the clock starts at 08:00 UTC = 02:00 in Chicago; process at 03:00 local
    pipeline.conn.execute("UPDATE districts SET process_at = '03:00' WHERE code = 'D001'")
    pipeline.conn.commit()
    pipeline.upload("D001", clean_file())
    t1 = pipeline.tick(instance, "D001", None)
    pipeline.clock.advance(pipeline.settle)
    t2 = pipeline.tick(instance, "D001", t1.cursor)
    assert isinstance(t2, dg.SensorResult) and not t2.run_requests
    assert "nightly" in str(t2.skip_reason)
    pipeline.clock.advance(3600)
    assert upload_key(pipeline.request(pipeline.tick(instance, "D001", t2.cursor)))


def test_the_district_partitions_follow_the_locations_districts(
    instance: dg.DagsterInstance,
) -> None:
    sensor = build_district_partitions_sensor(["D001", "D002"])
    first = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(first, dg.SensorResult) and not first.run_requests
    [add] = first.dynamic_partitions_requests
    assert add.partitions_def_name == DISTRICTS.name
    assert list(add.partition_keys) == ["D001", "D002"]
    # as the daemon does; a district gone from master data keeps its key (and its history)
    instance.add_dynamic_partitions(DISTRICTS.name, ["D001", "D002", "D999"])
    second = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(second, dg.SkipReason)
    assert instance.get_dynamic_partitions(DISTRICTS.name) == ["D001", "D002", "D999"]


# -- the job -------------------------------------------------------------------------------


def test_clean_upload_end_to_end(pipeline: Pipeline, instance: dg.DagsterInstance) -> None:
    data = clean_file()
    request, result = pipeline.sensor_run(instance, "D001", data)
    key = upload_key(request)
    assert result.success
    assert result.dagster_run.tags[DISTRICT_TAG] == "D001"
    assert result.dagster_run.tags[UPLOAD_KEY_TAG] == key
    # every materialization names its upload, in the district's partition
    assets = ("upload_file", "upload_outcome", "error_report", "change_report", "district_email")
    for asset in assets:
        assert materialization(result, asset)["upload_key"] == key, asset
    assert {e.partition for e in result.get_asset_materialization_events()} == {"D001"}

    # claimed by a rename into processed/, nothing left in incoming/, no error file; the
    # raw file (clear passwords) left processed/ once archived (EAMS_PROCESSED_RETENTION_DAYS=0)
    assert pipeline.files("D001", "incoming") == []
    claimed = materialization(result, "upload_file")["processed_path"]
    assert claimed == f"processed/students_{key}.csv"
    assert pipeline.files("D001", "processed") == []
    assert materialization(result, "district_email")["raw_file_removed"] is True
    assert pipeline.files("D001", "errors") == []

    # archived, encrypted, content hash recorded
    upload = get_upload(pipeline.conn, key)
    assert upload is not None and upload.status == "processed"
    assert upload.content_sha256 == hashlib.sha256(data).hexdigest()
    archived = Path(upload.archive_path)
    assert archived.is_file() and archived.parent.name == "D001"
    assert SECRET_PASSWORD.encode() not in archived.read_bytes()
    assert materialization(result, "upload_file")["sha256"] == upload.content_sha256

    assert set(builders.students(pipeline.conn, "D001")) == {SID_A, SID_B}
    report = materialization(result, "error_report")
    assert (report["rows"], report["added"], report["errors"]) == (2, 2, 0)

    [mail] = pipeline.smtp.wait_for(1)
    assert "SUCCESSFUL" in mail["Subject"] and "D001" in mail["Subject"]
    assert mail["To"] == "sis-admin@d001.example.org, it@d001.example.org"
    body = mail.get_content()
    assert "Students added" in body and "2" in body
    assert_no_student_data(body + str(mail["Subject"]))


def test_upload_outcome_logs_its_steps_and_records_their_seconds(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    _, result = pipeline.sensor_run(instance, "D001", clean_file())
    assert result.success
    meta = materialization(result, "upload_outcome")
    for step in ("read", "validate", "hash", "lock", "snapshot", "plan", "apply", "record"):
        assert meta[f"seconds_{step}"] >= 0, step
    assert meta["hashed_passwords"] == 2 and meta["cached_hashes"] == 2
    assert meta["hash_rate_per_s"] > 0
    entries = [e for e in instance.all_logs(result.run_id) if e.step_key == "upload_outcome"]
    logs = [line for e in entries for line in (e.user_message or "").splitlines()]
    assert any(m.startswith("hash: 2/2 (100%), ") for m in logs), logs
    assert any(m.startswith("apply done in ") for m in logs), logs
    assert_no_student_data("\n".join(logs))
    # a small upload's step lines are batched in the run's log (each entry is an event
    # written to Dagster's storage): one entry per 5 s of steps, not one per step
    progress = [e for e in entries if "done in " in (e.user_message or "")]
    done_lines = [m for m in logs if " done in " in m]
    seconds = sum(v for k, v in meta.items() if k.startswith("seconds_"))
    assert len(progress) <= seconds // 5 + 2, [e.user_message for e in entries]
    assert len(progress) < len(done_lines), [e.user_message for e in entries]


def test_upload_with_row_errors_publishes_the_error_file_and_reports_it(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    request, result = pipeline.sensor_run(instance, "D002", file_with_errors())
    assert result.success
    upload = get_upload(pipeline.conn, upload_key(request))
    assert upload is not None and upload.status == "partially_processed"
    name = f"students_errors_{upload.upload_id}.csv"
    assert pipeline.files("D002", "errors") == [name]  # no temporary name left behind
    content = (pipeline.user_dir("D002") / "errors" / name).read_text(encoding="utf-8")
    assert content.startswith("Line Number,Student ID,Column,Error Code,Message")
    assert "INVALID_GRADE" in content and "SCHOOL_NOT_FOUND" in content
    assert SECRET_PASSWORD not in content

    report = materialization(result, "error_report")
    assert (report["rows"], report["added"], report["errors"]) == (3, 1, 2)
    assert report["error_codes"] == {"INVALID_GRADE": 1, "SCHOOL_NOT_FOUND": 1}
    assert report["error_file"] == f"/errors/{name}"
    assert "INVALID_GRADE" in report["preview"] and SECRET_PASSWORD not in report["preview"]

    [mail] = pipeline.smtp.wait_for(1)
    assert "PARTIALLY" in mail["Subject"]
    body = mail.get_content()
    assert f"/errors/{name}" in body
    assert "INVALID_GRADE" in body and "SCHOOL_NOT_FOUND" in body
    assert_no_student_data(body + str(mail["Subject"]))
    assert pipeline.files("D001", "errors") == []  # the other district saw nothing


def test_rejected_upload_emails_the_failure_with_the_error_file(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    bad_header = b"School Code,Student ID,Surname\r\n101,STU-77810,Zyxwvutson\r\n"
    request, result = pipeline.sensor_run(instance, "D001", bad_header)
    assert result.success  # a bad file is an outcome, not a crash
    upload = get_upload(pipeline.conn, upload_key(request))
    assert upload is not None and upload.status == "rejected"
    assert pipeline.files("D001", "errors") == [f"students_errors_{upload.upload_id}.csv"]
    [mail] = pipeline.smtp.wait_for(1)
    assert "FAILED" in mail["Subject"]
    assert "HEADER_MISMATCH" in mail.get_content()
    assert builders.students(pipeline.conn, "D001") == {}


def test_an_upload_above_the_limit_is_rejected_without_being_downloaded(
    pipeline: Pipeline, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAMS_MAX_UPLOAD_BYTES", "100")
    request, result = pipeline.sensor_run(instance, "D001", clean_file())
    assert result.success  # an oversized file is an outcome, not a crash
    assert materialization(result, "upload_file")["too_large"] is True
    upload = get_upload(pipeline.conn, upload_key(request))
    assert upload is not None and upload.status == "rejected"
    assert upload.error_codes == {"FILE_TOO_LARGE": 1}
    assert upload.counts["rows"] == 0
    assert pipeline.files("D001", "errors") == [f"students_errors_{upload.upload_id}.csv"]
    published = pipeline.user_dir("D001") / "errors" / pipeline.files("D001", "errors")[0]
    assert "FILE_TOO_LARGE" in published.read_text()
    [mail] = pipeline.smtp.wait_for(1)
    assert "FAILED" in mail["Subject"] and "FILE_TOO_LARGE" in mail.get_content()
    # out of incoming/, and off SFTP once rejected: its clear passwords do not stay
    assert pipeline.files("D001", "processed") == []
    assert pipeline.files("D001", "incoming") == []
    assert not list(pipeline.archive_dir.rglob("*.fernet"))
    assert builders.students(pipeline.conn, "D001") == {}
    # running it again changes nothing and sends nothing more
    again = pipeline.run_upload(instance, upload_key(request))
    assert again.success and len(pipeline.smtp.wait_for(1)) == 1


def test_a_crash_after_the_claim_is_recovered_by_running_again(
    pipeline: Pipeline, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    data = clean_file()
    pipeline.upload("D001", data)
    t1 = pipeline.tick(instance, "D001", None)
    pipeline.clock.advance(pipeline.settle)
    request = pipeline.request(pipeline.tick(instance, "D001", t1.cursor))
    key = upload_key(request)
    stat = (int(request.tags["eams/file_size"]), int(request.tags["eams/file_mtime"]))

    # the archive cannot be written: the run fails after claiming, before applying
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("x")
    broken = ArchiveResource(directory=str(blocked / "archive"))
    failed = pipeline.run_upload(instance, key, stat=stat, raise_on_error=False, archive=broken)
    assert not failed.success
    assert pipeline.files("D001", "incoming") == []
    assert pipeline.files("D001", "processed") == [f"students_{key}.csv"]  # not lost
    assert get_upload(pipeline.conn, key) is None  # not applied
    assert pipeline.smtp.messages == []

    # re-execution (same tags): the claimed file is read from processed/, archived, applied
    again = pipeline.run_upload(instance, key, stat=stat)
    assert again.success
    assert materialization(again, "upload_file")["source"].startswith("processed/")
    assert set(builders.students(pipeline.conn, "D001")) == {SID_A, SID_B}
    builders.assert_license_invariant(pipeline.conn)
    assert len(pipeline.smtp.wait_for(1)) == 1

    # once more (e.g. a backfill): archive only, nothing applied twice, no second email
    assert pipeline.files("D001", "processed") == []  # removed after the successful run
    third = pipeline.run_upload(instance, key)
    assert third.success
    assert materialization(third, "upload_file")["source"].startswith("archive")
    assert materialization(third, "upload_outcome")["already_applied"] is True
    assert materialization(third, "district_email")["sent"] is False
    count = pipeline.conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
    assert count == 1
    assert builders.used(pipeline.conn, "ENT-D001") == 1  # SID_A active; SID_B created as X
    assert len(pipeline.smtp.messages) == 1


def test_a_run_cannot_claim_a_file_that_changed_since_the_sensor_saw_it(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    pipeline.upload("D001", clean_file())
    t1 = pipeline.tick(instance, "D001", None)
    pipeline.clock.advance(pipeline.settle)
    request = pipeline.request(pipeline.tick(instance, "D001", t1.cursor))
    pipeline.upload("D001", clean_file(grade="7"), mtime=1_700_000_000)  # replaced meanwhile
    stat = (int(request.tags["eams/file_size"]), int(request.tags["eams/file_mtime"]))
    result = pipeline.run_upload(instance, upload_key(request), stat=stat, raise_on_error=False)
    assert not result.success
    assert pipeline.files("D001", "incoming") == ["students.csv"]  # left for the next run
    assert pipeline.files("D001", "processed") == []


def test_reprocessing_an_old_upload_after_a_newer_one_does_not_roll_students_back(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    # upload 1 is claimed and archived, but its run dies before applying it
    pipeline.upload("D001", clean_file(grade="5"))
    t1 = pipeline.tick(instance, "D001", None)
    pipeline.clock.advance(pipeline.settle)
    first = pipeline.request(pipeline.tick(instance, "D001", t1.cursor))
    old_key = upload_key(first)
    stat = (int(first.tags["eams/file_size"]), int(first.tags["eams/file_mtime"]))
    partial = pipeline.run_upload(
        instance, old_key, stat=stat, asset_selection=[dg.AssetKey("upload_file")]
    )
    assert partial.success and get_upload(pipeline.conn, old_key) is None

    # upload 2, newer, is applied: grade 6
    pipeline.clock.advance(3600)
    _, newer = pipeline.sensor_run(instance, "D001", clean_file(grade="6"))
    assert newer.success
    assert builders.students(pipeline.conn, "D001")[SID_A]["grade"] == "6"
    assert len(pipeline.smtp.wait_for(1)) == 1

    # backfill of upload 1: superseded, not applied, report regenerated, district not emailed
    old = pipeline.run_upload(instance, old_key)
    assert old.success
    assert materialization(old, "upload_outcome")["status"] == "superseded"
    assert materialization(old, "error_report")["status"] == "superseded"
    assert materialization(old, "district_email")["sent"] is False
    assert builders.students(pipeline.conn, "D001")[SID_A]["grade"] == "6"
    assert len(pipeline.smtp.messages) == 1

    # the explicit operator decision applies it
    forced = pipeline.run_upload(
        instance, old_key, ops={"upload_outcome": {"config": {"allow_older": True}}}
    )
    assert forced.success
    # applied (SID_B's X row now meets an existing student: STUDENT_EXISTS)
    assert materialization(forced, "upload_outcome")["status"] == "partially_processed"
    assert builders.students(pipeline.conn, "D001")[SID_A]["grade"] == "5"

    # an upload already applied is never applied again, whatever its age
    newer_key = newer.dagster_run.tags[UPLOAD_KEY_TAG]
    again = pipeline.run_upload(instance, newer_key)
    assert materialization(again, "upload_outcome")["already_applied"] is True
    assert builders.students(pipeline.conn, "D001")[SID_A]["grade"] == "5"


def test_a_district_run_touches_only_its_own_directory(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    other = pipeline.upload("D002", file_with_errors())
    before = {p.name: p.stat().st_mtime_ns for p in pipeline.user_dir("D002").rglob("*")}
    _, result = pipeline.sensor_run(instance, "D001", file_with_errors())
    assert result.success
    after = {p.name: p.stat().st_mtime_ns for p in pipeline.user_dir("D002").rglob("*")}
    assert after == before and other.read_bytes() == file_with_errors()
    assert pipeline.files("D002", "processed") == [] and pipeline.files("D002", "errors") == []
    assert len(pipeline.files("D001", "errors")) == 1
    assert [p.name for p in pipeline.archive_dir.iterdir()] == ["D001"]
    # the D002 sensor still sees its own file only
    t = pipeline.tick(instance, "D002", None)
    state = SensorState.from_cursor(t.cursor)
    assert state.watched is not None and state.watched.size == len(file_with_errors())


def test_a_run_for_an_unknown_partition_of_another_district_is_refused(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    pipeline.upload("D002", clean_file())
    key = UploadRef.new("D001", pipeline.clock.now).key
    result = pipeline.run_upload(instance, key, stat=(1, 1), raise_on_error=False)
    assert not result.success
    assert pipeline.files("D002", "incoming") == ["students.csv"]


def test_a_run_whose_upload_is_not_of_its_district_partition_is_refused(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    pipeline.upload("D002", clean_file())
    key = UploadRef.new("D001", pipeline.clock.now).key
    instance.add_dynamic_partitions(DISTRICTS.name, ["D001", "D002"])
    job = pipeline.defs().resolve_job_def("upload_job")
    result = job.execute_in_process(
        partition_key="D002",
        instance=instance,
        run_config=upload_run_config(key),
        tags={"eams/file_size": "1", "eams/file_mtime": "1"},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert failure.step_key == "upload_file"
    assert f"upload {key} is of district D001, not of this run's partition D002" in (
        failure.step_failure_data.error.message
    )
    assert pipeline.files("D002", "incoming") == ["students.csv"]  # nothing claimed
    # a run without its upload (e.g. a backfill of district partitions) does not start
    with pytest.raises(dg.DagsterInvalidConfigError, match="upload_ref"):
        job.execute_in_process(partition_key="D002", instance=instance)
    assert pipeline.files("D002", "incoming") == ["students.csv"]


# -- operator alerts -----------------------------------------------------------------------


def _failed_run(pipeline: Pipeline, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    dead_smtp = SmtpResource(port=free_port(), timeout_seconds=5)
    pipeline.upload("D001", clean_file())
    t1 = pipeline.tick(instance, "D001", None)
    pipeline.clock.advance(pipeline.settle)
    request = pipeline.request(pipeline.tick(instance, "D001", t1.cursor))
    stat = (int(request.tags["eams/file_size"]), int(request.tags["eams/file_mtime"]))
    result = pipeline.run_upload(
        instance, upload_key(request), stat=stat, raise_on_error=False, smtp=dead_smtp
    )
    assert not result.success
    return result


def _alert(pipeline: Pipeline, instance: dg.DagsterInstance, result) -> object:
    sensor = build_operator_alert_sensor([pipeline.defs().resolve_job_def("upload_job")])
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        resources={"smtp": SmtpResource(port=pipeline.smtp.port)},
    )
    return sensor(context.for_run_failure())


def test_a_crashed_run_alerts_the_operators_without_student_data(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    result = _failed_run(pipeline, instance)
    _alert(pipeline, instance, result)
    [mail] = pipeline.smtp.wait_for(1)
    assert mail["To"] == "ops@eams.example.com, oncall@eams.example.com"
    assert "D001" in mail["Subject"] and result.run_id in mail["Subject"]
    body = mail.get_content()
    assert "step district_email: ConnectionRefusedError: [Errno 111]" in body
    assert "district_email" in body and result.dagster_run.tags[UPLOAD_KEY_TAG] in body
    assert_no_student_data(body)


def test_no_alert_while_the_run_will_be_retried(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    result = _failed_run(pipeline, instance)
    instance.add_run_tags(result.run_id, {"dagster/will_retry": "true"})
    outcome = _alert(pipeline, instance, result)
    assert isinstance(outcome, dg.SkipReason)
    assert pipeline.smtp.messages == []


def test_the_alert_names_the_failed_step_and_its_reason(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    key = UploadRef.new("D001", pipeline.clock.now).key
    result = pipeline.run_upload(instance, key, raise_on_error=False)  # nothing to claim
    assert not result.success
    _alert(pipeline, instance, result)
    [mail] = pipeline.smtp.wait_for(1)
    body = mail.get_content()
    assert f"step upload_file: Failure: upload {key} is neither archived nor in processed/" in body
