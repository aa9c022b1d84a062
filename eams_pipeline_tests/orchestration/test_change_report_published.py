"""The change report through the upload job, on the real PostgreSQL, loopback SFTP and SMTP
servers: published to the district's reports/ (created when missing), line by line what
student_history says, formula-safe, named in the email; after a revert, the revert's report
beside it, named in the revert email."""

from __future__ import annotations

import dagster as dg

from eams_pipeline.services.revert import revert_upload
from eams_pipeline_tests import builders
from eams_pipeline_tests.change_history_oracle import expected_lines, read_report
from eams_pipeline_tests.orchestration_env import (
    SECRET_PASSWORD,
    Pipeline,
    assert_no_student_data,
    district,
    materialization,
    upload_key,
)

FORMULA = '=HYPERLINK("http://x.example","y")'


def district_with_students(pipeline: Pipeline) -> None:
    """D001 with five students: S1, S3, S4 active on the Enterprise order, S2 deactivated,
    S5 active on the regular order."""
    doc = district("D001", pipeline.sftp)
    doc["existing_students"] = [
        builders.existing_student("S1", order="ENT-D001"),
        builders.existing_student("S2", order="ENT-D001", status="deactivated"),
        builders.existing_student("S3", order="ENT-D001"),
        builders.existing_student("S4", order="ENT-D001"),
        builders.existing_student("S5", order="REG-D001"),
    ]
    builders.load(pipeline.conn, doc)
    pipeline.conn.commit()


def every_kind_of_change() -> bytes:
    return builders.csv_bytes(
        [
            builders.row("S1", "I", school_code="102", grade="6", password=""),  # moved, grade
            builders.row("S2", "A", password=""),  # activated
            builders.row("S3", "D", password=""),  # deactivated
            builders.row("S4", "A", password=SECRET_PASSWORD, class_name=FORMULA),
            builders.row("S5", "I", password=""),  # regular order -> Enterprise
            builders.row("N1", password=SECRET_PASSWORD),  # added, active
            builders.row("-N2", "X", password=SECRET_PASSWORD),  # added, deactivated
            builders.row("BAD", grade="13", password=SECRET_PASSWORD),  # an error: no change
        ]
    )


def test_the_change_report_is_published_as_the_history_says_and_emailed(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    district_with_students(pipeline)
    reports = pipeline.user_dir("D001") / "reports"
    if reports.exists():
        reports.rmdir()  # the run creates it when missing
    request, result = pipeline.sensor_run(instance, "D001", every_kind_of_change())
    key = upload_key(request)
    assert result.success
    name = f"students_changes_{key}.csv"
    assert pipeline.files("D001", "reports") == [name]  # created; no temporary name left
    content = (pipeline.user_dir("D001") / "reports" / name).read_bytes()
    lines = read_report(content)
    assert lines == expected_lines(pipeline.conn, key)
    assert lines == [
        ["Line Number", "Student ID", "Change", "Field", "Before", "After"],
        ["2", "S1", "moved", "School Code", "101", "102"],
        ["2", "S1", "updated", "Grade", "5", "6"],
        ["3", "S2", "activated", "Status", "deactivated", "active"],
        ["4", "S3", "deactivated", "Status", "active", "deactivated"],
        ["5", "S4", "updated", "Password", "", "changed"],
        ["5", "S4", "updated", "Class Name", "", "'" + FORMULA],
        ["6", "S5", "updated", "Order", "REG-D001", "ENT-D001"],
        ["7", "N1", "added", "Status", "", "active"],
        ["8", "'-N2", "added", "Status", "", "deactivated"],
    ]
    assert SECRET_PASSWORD.encode() not in content

    meta = materialization(result, "change_report")
    assert meta["upload_key"] == key
    assert meta["change_report"] == f"/reports/{name}"
    assert meta["change_lines"] == 9
    assert meta["changes"] == {
        "added": 2,
        "activated": 1,
        "deactivated": 1,
        "moved": 1,
        "updated": 4,
    }

    [mail] = pipeline.smtp.wait_for(1)
    assert "PARTIALLY" in mail["Subject"]
    body = mail.get_content()
    assert f"/reports/{name}" in body
    assert "change report" in body
    assert_no_student_data(body)
    assert "N1" not in body and "S4" not in body


def test_a_revert_publishes_what_it_put_back_and_the_email_names_it(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    district_with_students(pipeline)
    request, result = pipeline.sensor_run(instance, "D001", every_kind_of_change())
    key = upload_key(request)
    assert result.success
    pipeline.smtp.wait_for(1)
    applied = (pipeline.user_dir("D001") / "reports" / f"students_changes_{key}.csv").read_bytes()

    revert_upload(pipeline.conn, key, reverted_by="carol")
    rerun = pipeline.run_upload(instance, key)  # the follow-up run (eams_decisions)
    assert rerun.success
    revert_name = f"students_changes_{key}_revert.csv"
    assert pipeline.files("D001", "reports") == [f"students_changes_{key}.csv", revert_name]
    # the upload's own report is the same as before (the history did not change)
    again = (pipeline.user_dir("D001") / "reports" / f"students_changes_{key}.csv").read_bytes()
    assert again == applied
    lines = read_report((pipeline.user_dir("D001") / "reports" / revert_name).read_bytes())
    assert lines == expected_lines(pipeline.conn, key, revert=True)
    assert lines[1:] == [
        ["2", "S1", "moved", "School Code", "102", "101"],
        ["2", "S1", "updated", "Grade", "6", "5"],
        ["3", "S2", "deactivated", "Status", "active", "deactivated"],
        ["4", "S3", "activated", "Status", "deactivated", "active"],
        ["5", "S4", "updated", "Password", "", "changed"],
        ["5", "S4", "updated", "Class Name", "'" + FORMULA, ""],
        ["6", "S5", "updated", "Order", "ENT-D001", "REG-D001"],
        ["7", "N1", "deactivated", "Status", "active", "deactivated"],
    ]  # -N2 was added deactivated: the revert leaves it as it is
    meta = materialization(rerun, "change_report")
    assert meta["revert_change_report"] == f"/reports/{revert_name}"
    assert meta["revert_change_lines"] == 8

    mail = pipeline.smtp.wait_for(2)[-1]
    assert "REVERTED" in mail["Subject"]
    body = mail.get_content()
    assert f"/reports/{revert_name}" in body
    assert_no_student_data(body)
