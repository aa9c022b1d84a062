"""The change guard and reverts in Dagster, on the real PostgreSQL, SFTP and SMTP servers:
a held upload is a successful run whose `change_guard` asset check fails; approving it is a
re-execution with `approve_hold: true`; the revert job puts the students back."""

from __future__ import annotations

import json

import dagster as dg

from eams_pipeline.core.guard import DEFAULT_THRESHOLDS
from eams_pipeline.db.uploads import get_upload
from eams_pipeline.orchestration.jobs import REVERT_JOB_NAME
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import Pipeline, upload_key
from eams_pipeline_tests.test_orchestration_pipeline import (
    SECRET_PASSWORD,
    assert_no_student_data,
    materialization,
)

IDS = [f"STU-{i:05d}" for i in range(10)]


def check_result(result: dg.ExecuteInProcessResult) -> tuple[bool, dict[str, object]]:
    [evaluation] = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    metadata = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    return evaluation.passed, metadata


def test_a_held_upload_fails_its_check_then_is_approved_then_reverted(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    conn = pipeline.conn
    conn.execute(
        "UPDATE districts SET guard = %s WHERE code = 'D001'", (json.dumps(DEFAULT_THRESHOLDS),)
    )
    conn.commit()
    rows = [builders.row(s, password=SECRET_PASSWORD) for s in IDS]
    _, first = pipeline.sensor_run(instance, "D001", builders.csv_bytes(rows))
    assert first.success and check_result(first)[0] is True
    pipeline.smtp.wait_for(1)
    before = builders.students(conn, "D001")

    pipeline.clock.advance(3600)
    all_d = [builders.row(s, "D", password="") for s in IDS[:6]]
    all_d.append(builders.row(IDS[6], grade="15", password=""))  # a row error: error file
    all_d += [builders.row(s, password="") for s in IDS[7:]]
    request, held = pipeline.sensor_run(instance, "D001", builders.csv_bytes(all_d))
    key = upload_key(request)
    assert held.success  # a held file is not a crash
    passed, metadata = check_result(held)
    assert passed is False
    assert metadata["guard_rule"] == "max_deactivated_pct"
    assert metadata["guard"] == "deactivates 6 of 10 active students (60.0%), limit 10%"
    assert materialization(held, "upload_outcome")["status"] == "held"
    report = materialization(held, "error_report")
    assert report["status"] == "held" and report["error_codes"] == {"INVALID_GRADE": 1}
    upload = get_upload(conn, key)
    assert pipeline.files("D001", "errors") == [f"students_errors_{upload.upload_id}.csv"]
    assert builders.students(conn, "D001") == before  # nothing applied

    mails = pipeline.smtp.wait_for(3)[1:]
    district_mail = next(m for m in mails if "d001.example.org" in m["To"])
    operators_mail = next(m for m in mails if "ops@eams.example.com" in m["To"])
    assert "HELD for review" in district_mail["Subject"]
    body = operators_mail.get_content()
    assert "deactivates 6 of 10 active students (60.0%), limit 10%" in body
    assert f"eams uploads approve {key}" in body and f"eams uploads discard {key}" in body
    for mail in (district_mail, operators_mail):
        assert_no_student_data(mail.get_content() + str(mail["Subject"]))
        assert IDS[0] not in mail.get_content()

    # a plain re-run does not apply it
    again = pipeline.run_upload(instance, key)
    assert materialization(again, "upload_outcome")["status"] == "held"
    assert builders.students(conn, "D001") == before

    approved = pipeline.run_upload(
        instance,
        key,
        ops={"upload_outcome": {"config": {"approve_hold": True, "approved_by": "alice"}}},
    )
    assert approved.success
    assert materialization(approved, "upload_outcome")["status"] == "partially_processed"
    assert check_result(approved)[0] is True
    after = builders.students(conn, "D001")
    assert sum(v["status"] == "deactivated" for v in after.values()) == 6
    assert conn.execute(
        "SELECT decision, decided_by FROM uploads WHERE upload_key = %s", (key,)
    ).fetchone() == ("approved", "alice")
    outcome_mail = pipeline.smtp.wait_for(4)[-1]  # the held email was not sent twice
    assert "PARTIALLY" in outcome_mail["Subject"]

    job = pipeline.defs().resolve_job_def(REVERT_JOB_NAME)
    reverted = job.execute_in_process(
        instance=instance,
        run_config={"ops": {"revert_upload_op": {"config": {"upload_key": key}}}},
    )
    assert reverted.success
    assert builders.students(conn, "D001") == before
    builders.assert_license_invariant(conn)
    assert get_upload(conn, key).status == "reverted"
    # re-running the reverted upload applies nothing and emails nobody
    rerun = pipeline.run_upload(instance, key)
    assert rerun.success
    assert materialization(rerun, "upload_outcome")["status"] == "reverted"
    assert materialization(rerun, "district_email")["sent"] is False
    assert builders.students(conn, "D001") == before
