"""The change guard and reverts in Dagster, on the real PostgreSQL, SFTP and SMTP servers and
a real Dagster instance: a held upload is a successful run tagged `eams/outcome: held` whose
`change_guard` asset check fails; approving it (a re-execution with `approve_hold: true`, or
`eams uploads approve` with Dagster not involved) is then what every place says; the revert
job and `eams uploads revert` put the students back and the district is told."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import pytest

from eams_pipeline.core.guard import DEFAULT_THRESHOLDS
from eams_pipeline.db.uploads import get_upload
from eams_pipeline.orchestration.decisions import (
    DECISION_TAG,
    DECISIONS_SENSOR,
    FOLLOW_UP_TAG,
    OUTCOME_TAG,
    build_decision_sensor,
)
from eams_pipeline.orchestration.jobs import REVERT_JOB_NAME, upload_job
from eams_pipeline_tests import builders
from eams_pipeline_tests.cli_runner import eams
from eams_pipeline_tests.orchestration_env import (
    SECRET_PASSWORD,
    Pipeline,
    assert_no_student_data,
    materialization,
    upload_key,
)

IDS = [f"STU-{i:05d}" for i in range(10)]


def check_result(result: dg.ExecuteInProcessResult) -> tuple[bool, dict[str, object], str]:
    [evaluation] = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    metadata = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    return evaluation.passed, metadata, evaluation.description


def tags_of(instance: dg.DagsterInstance, *results: dg.ExecuteInProcessResult) -> list[dict]:
    """Each run's eams/outcome and eams/decision tags, as the Runs page shows them now."""
    out = []
    for result in results:
        tags = instance.get_run_by_id(result.run_id).tags
        out.append({k: tags[k] for k in (OUTCOME_TAG, DECISION_TAG) if k in tags})
    return out


def decisions(pipeline: Pipeline, instance: dg.DagsterInstance) -> dg.SensorResult | dg.SkipReason:
    """One tick of the eams_decisions sensor."""
    sensor = pipeline.defs().resolve_sensor_def(DECISIONS_SENSOR)
    context = dg.build_sensor_context(
        instance=instance, sensor_name=sensor.name, resources=pipeline.resources()
    )
    return sensor(context)


def follow_up(
    pipeline: Pipeline, instance: dg.DagsterInstance, key: str, status: str
) -> dg.ExecuteInProcessResult:
    """The sensor asks for one run of the upload's partition; run it as the daemon would."""
    tick = decisions(pipeline, instance)
    assert isinstance(tick, dg.SensorResult), tick
    [request] = tick.run_requests
    assert (upload_key(request), request.run_key) == (key, f"{key}:{status}")
    assert request.tags[FOLLOW_UP_TAG] == status
    result = pipeline.run_upload(instance, key)
    assert result.success
    assert isinstance(decisions(pipeline, instance), dg.SkipReason)  # reflected: quiet again
    return result


def held_upload(
    pipeline: Pipeline, instance: dg.DagsterInstance, *, row_error: bool = True
) -> tuple[str, dg.ExecuteInProcessResult, dg.ExecuteInProcessResult, dict]:
    """A first clean upload (the baseline), then one that deactivates 6 of the 10 students:
    held. Returns its key, both runs and the students before it."""
    conn = pipeline.conn
    # the default percentages with a floor of 1 (a 10-student district)
    conn.execute(
        "UPDATE districts SET guard = %s WHERE code = 'D001'",
        (json.dumps({**DEFAULT_THRESHOLDS, "min_count": 1}),),
    )
    conn.commit()
    rows = [builders.row(s, password=SECRET_PASSWORD) for s in IDS]
    _, first = pipeline.sensor_run(instance, "D001", builders.csv_bytes(rows))
    assert first.success and check_result(first)[0] is True
    pipeline.smtp.wait_for(1)
    before = builders.students(conn, "D001")

    pipeline.clock.advance(3600)
    all_d = [builders.row(s, "D", password="") for s in IDS[:6]]
    if row_error:
        all_d.append(builders.row(IDS[6], grade="15", password=""))  # a row error: error file
    else:
        all_d.append(builders.row(IDS[6], password=""))
    all_d += [builders.row(s, password="") for s in IDS[7:]]
    request, held = pipeline.sensor_run(instance, "D001", builders.csv_bytes(all_d))
    key = upload_key(request)
    assert held.success  # a held file is not a crash
    return key, first, held, before


def test_a_held_upload_fails_its_check_then_is_approved_then_reverted(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    conn = pipeline.conn
    key, first, held, before = held_upload(pipeline, instance)
    passed, metadata, description = check_result(held)
    assert passed is False
    assert metadata["guard_rule"] == "max_deactivated_pct"
    assert metadata["guard"] == "deactivates 6 of 10 active students, 60%, limit 10%"
    assert (metadata["district"], metadata["upload"]) == ("D001", key)
    assert description.startswith(f"District D001, upload {key}: HELD, nothing applied: ")
    assert "deactivates 6 of 10 active students, 60%, limit 10%" in description
    assert materialization(held, "upload_outcome")["status"] == "held"
    report = materialization(held, "error_report")
    assert report["status"] == "held" and report["error_codes"] == {"INVALID_GRADE": 1}
    upload = get_upload(conn, key)
    assert pipeline.files("D001", "errors") == [f"students_errors_{upload.upload_id}.csv"]
    assert builders.students(conn, "D001") == before  # nothing applied
    # every upload run is tagged with its upload's status: the Runs page filters holds
    assert tags_of(instance, first, held) == [{OUTCOME_TAG: "processed"}, {OUTCOME_TAG: "held"}]
    # the held upload's raw file stays in processed/ (the first one's is gone)
    assert pipeline.files("D001", "processed") == [f"students_{key}.csv"]
    assert isinstance(decisions(pipeline, instance), dg.SkipReason)  # nothing decided yet

    mails = pipeline.smtp.wait_for(3)[1:]
    district_mail = next(m for m in mails if "d001.example.org" in m["To"])
    operators_mail = next(m for m in mails if "ops@eams.example.com" in m["To"])
    assert "HELD for review" in district_mail["Subject"]
    district_text = " ".join(district_mail.get_content().split())
    assert (
        "many students deactivated (max_deactivated_pct): the file deactivates 6 of 10 "
        "active students, 60%, limit 10%." in district_text
    )
    assert f"/errors/students_errors_{upload.upload_id}.csv" in district_text
    body = operators_mail.get_content()
    assert "deactivates 6 of 10 active students, 60%, limit 10%" in body
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
    outcome = materialization(approved, "upload_outcome")
    assert (outcome["status"], outcome["decision"]) == ("partially_processed", "approved by alice")
    passed, metadata, description = check_result(approved)
    assert passed is True and metadata["decision"] == "approved by alice"
    assert description == (
        f"District D001, upload {key}: held (deactivates 6 of 10 active students, 60%, "
        "limit 10%), then approved by alice."
    )
    after = builders.students(conn, "D001")
    assert sum(v["status"] == "deactivated" for v in after.values()) == 6
    assert conn.execute(
        "SELECT decision, decided_by FROM uploads WHERE upload_key = %s", (key,)
    ).fetchone() == ("approved", "alice")
    # no run of the upload says held any more
    approved_tags = {OUTCOME_TAG: "partially_processed", DECISION_TAG: "approved by alice"}
    assert tags_of(instance, held, again, approved) == [approved_tags] * 3
    assert tags_of(instance, first) == [{OUTCOME_TAG: "processed"}]
    outcome_mail = pipeline.smtp.wait_for(4)[-1]  # the held email was not sent twice
    assert "PARTIALLY processed after review" in outcome_mail["Subject"]
    assert "APPROVED after review by alice" in " ".join(outcome_mail.get_content().split())
    assert pipeline.files("D001", "processed") == []  # applied: the raw file is gone
    assert isinstance(decisions(pipeline, instance), dg.SkipReason)  # the run reported it

    job = pipeline.defs().resolve_job_def(REVERT_JOB_NAME)
    reverted = job.execute_in_process(
        instance=instance,
        run_config={
            "ops": {"revert_upload_op": {"config": {"upload_key": key, "reverted_by": "carol"}}}
        },
    )
    assert reverted.success
    assert builders.students(conn, "D001") == before
    builders.assert_license_invariant(conn)
    assert get_upload(conn, key).status == "reverted"
    # the revert job runs outside the upload's partition: the sensor follows up
    rerun = follow_up(pipeline, instance, key, "reverted")
    assert materialization(rerun, "upload_outcome")["status"] == "reverted"
    assert materialization(rerun, "district_email")["sent"] is True
    revert_mail = pipeline.smtp.wait_for(5)[-1]
    assert revert_mail["Subject"] == (
        f"eAMS student update REVERTED: District D001 (D001), upload {key}"
    )
    assert "REVERTED by carol" in " ".join(revert_mail.get_content().split())
    assert re.search(r"Students restored as before +6\n", revert_mail.get_content())
    assert_no_student_data(revert_mail.get_content())
    reverted_tags = {
        OUTCOME_TAG: "reverted",
        DECISION_TAG: "approved by alice, then reverted by carol",
    }
    assert tags_of(instance, held, approved, rerun) == [reverted_tags] * 3
    # re-running the reverted upload applies nothing and emails nobody again
    last = pipeline.run_upload(instance, key)
    assert materialization(last, "district_email")["sent"] is False
    assert builders.students(conn, "D001") == before
    assert len(pipeline.smtp.messages) == 5


def _cli(pipeline: Pipeline, tmp_path: Path, *args: str):
    """`eams ...` as an operator runs it: the database and the archive, no Dagster."""
    return eams(*args, cwd=tmp_path, url=pipeline.db_url)


@pytest.fixture
def archive_env(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EAMS_ARCHIVE_DIR", str(pipeline.archive_dir))


def test_an_approval_in_the_cli_is_reflected_in_dagster(
    pipeline: Pipeline, instance: dg.DagsterInstance, tmp_path: Path, archive_env: None
) -> None:
    key, _first, held, _before = held_upload(pipeline, instance)
    pipeline.smtp.wait_for(3)
    shown = _cli(pipeline, tmp_path, "uploads", "show", key)
    assert f"eams uploads approve {key} --by YOUR_NAME" in shown.stdout  # archived: no --file
    assert f"eams uploads discard {key} --by YOUR_NAME" in shown.stdout

    # Dagster is not involved: the CLI records the decision in the database
    approved = _cli(pipeline, tmp_path, "uploads", "approve", key, "--by", "alice")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["status"] == "partially_processed"
    assert "its follow-up run (sensor eams_decisions) emails the district" in approved.stderr
    assert len(pipeline.smtp.messages) == 3  # the CLI sent nothing: Dagster does
    after = builders.students(pipeline.conn, "D001")
    assert sum(v["status"] == "deactivated" for v in after.values()) == 6

    # a sensor of a code location serving other districts leaves it alone
    other = build_decision_sensor(upload_job, ["D002"])
    assert isinstance(
        other(dg.build_sensor_context(instance=instance, resources=pipeline.resources())),
        dg.SkipReason,
    )

    result = follow_up(pipeline, instance, key, "partially_processed")
    outcome = materialization(result, "upload_outcome")
    assert (outcome["status"], outcome["decision"]) == ("partially_processed", "approved by alice")
    assert outcome["already_applied"] is True  # the CLI applied it; the run only reports
    passed, metadata, description = check_result(result)
    assert passed is True and metadata["decision"] == "approved by alice"
    assert description.endswith("then approved by alice.")
    expected = {OUTCOME_TAG: "partially_processed", DECISION_TAG: "approved by alice"}
    assert tags_of(instance, held, result) == [expected] * 2
    mail = pipeline.smtp.wait_for(4)[-1]
    text = " ".join(mail.get_content().split())
    assert "PARTIALLY processed after review" in mail["Subject"]
    assert "APPROVED after review by alice" in text
    upload = get_upload(pipeline.conn, key)
    assert f"on your SFTP site: /errors/students_errors_{upload.upload_id}.csv" in text
    assert pipeline.files("D001", "errors") == [f"students_errors_{upload.upload_id}.csv"]
    assert pipeline.files("D001", "processed") == []  # like any applied upload


def test_a_discard_in_the_cli_is_reflected_in_dagster(
    pipeline: Pipeline, instance: dg.DagsterInstance, tmp_path: Path, archive_env: None
) -> None:
    key, _first, held, before = held_upload(pipeline, instance, row_error=False)
    mails = pipeline.smtp.wait_for(3)
    held_mail = next(m for m in mails if "HELD for review" in m["Subject"])
    assert "error file" not in held_mail.get_content().lower()  # no row error: no file
    assert pipeline.files("D001", "errors") == []

    discarded = _cli(pipeline, tmp_path, "uploads", "discard", key, "--by", "bob")
    assert discarded.returncode == 0, discarded.stderr
    result = follow_up(pipeline, instance, key, "discarded")
    passed, _, description = check_result(result)
    assert passed is True and description.endswith("then discarded by bob.")
    assert tags_of(instance, held, result) == [
        {OUTCOME_TAG: "discarded", DECISION_TAG: "discarded by bob"}
    ] * 2
    mail = pipeline.smtp.wait_for(4)[-1]
    assert "DISCARDED after review" in mail["Subject"]
    text = " ".join(mail.get_content().split())
    assert "DISCARDED after review by bob" in text and "error file" not in text.lower()
    assert pipeline.files("D001", "processed") == []
    assert builders.students(pipeline.conn, "D001") == before


def test_a_held_upload_superseded_by_a_newer_one_stops_saying_held(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    key, _first, held, _before = held_upload(pipeline, instance)
    pipeline.clock.advance(3600)
    rows = [builders.row(s, password="") for s in IDS]
    _, newer = pipeline.sensor_run(instance, "D001", builders.csv_bytes(rows))
    assert materialization(newer, "upload_outcome")["status"] == "processed"
    result = follow_up(pipeline, instance, key, "superseded")
    passed, metadata, description = check_result(result)
    assert passed is False and metadata["held"] is False
    assert f"eams uploads approve {key} --by NAME --allow-older" == metadata["approve"]
    assert "then superseded by a newer upload; not applied." in description
    assert tags_of(instance, held) == [{OUTCOME_TAG: "superseded"}]
    assert materialization(result, "district_email")["sent"] is False
