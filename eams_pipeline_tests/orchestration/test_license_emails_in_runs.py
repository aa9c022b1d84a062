"""Licenses through the Dagster path, on the loopback SFTP and SMTP servers: the outcome
email's line per order holds the figures of `eams export licenses`; a district dropping
below `low_licenses` gets one "licenses running low" email to its contacts and account
managers (the operators when it has none), not a second one the same day; an upload with
NO_LICENSE_AVAILABLE rows sends it even so, once."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import dagster as dg
import pytest

from eams_pipeline import cli
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration.test_pipeline import clean_file, materialization
from eams_pipeline_tests.orchestration_env import OPERATORS, Pipeline, district, upload_key

CONTACTS = "sis-admin@{code}.example.org, it@{code}.example.org"
MANAGERS = ["am@vantage.example", "am2@vantage.example"]
LICENSE_LINE = re.compile(r"^  (\S+) \((.+)\): (\d+) in use, (\d+) total, (\d+) available$")


def _reload(pipeline: Pipeline, code: str, *, licenses: int, active: int, **keys: Any) -> None:
    doc = district(code, pipeline.sftp)
    doc["enterprise_order"]["licenses"] = licenses
    order = doc["enterprise_order"]["number"]
    doc["existing_students"] = [
        builders.existing_student(f"E{i}", order=order) for i in range(active)
    ]
    builders.load(pipeline.conn, doc | keys)
    pipeline.conn.commit()


def _license_lines(body: str) -> list[tuple[str, int, int, int]]:
    """(order, in use, total, available) of each line under "Licenses now:"."""
    lines = body.splitlines()
    out = []
    for line in lines[lines.index("Licenses now:") + 1 :]:
        found = LICENSE_LINE.match(line)
        if not found:
            break
        out.append((found[1], int(found[3]), int(found[4]), int(found[5])))
    return out


def _exported(capsys: pytest.CaptureFixture[str], code: str) -> list[tuple[str, int, int, int]]:
    capsys.readouterr()
    assert cli.main(["export", "licenses", "--district", code]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    return [(r["Order"], int(r["Used"]), int(r["Licenses"]), int(r["Available"])) for r in rows]


def _sensor_run(pipeline: Pipeline, instance: dg.DagsterInstance, code: str, data: bytes):
    request, result = pipeline.sensor_run(instance, code, data)
    assert result.success
    pipeline.clock.advance(3600)  # the next upload is another file, later the same day
    return upload_key(request), result


def test_the_outcome_email_has_one_license_line_per_order_as_exported(
    pipeline: Pipeline, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    _reload(pipeline, "D001", licenses=40, active=3)
    key, result = _sensor_run(pipeline, instance, "D001", clean_file())
    [mail] = pipeline.smtp.wait_for(1)  # no alert: 36 of 40 available
    assert "SUCCESSFUL" in mail["Subject"]
    lines = _license_lines(mail.get_content())
    assert lines == _exported(capsys, "D001")
    assert lines == [("ENT-D001", 4, 40, 36), ("REG-D001", 0, 50, 50)]
    assert f"Upload key {key}, upload id " in mail.get_content()
    assert materialization(result, "district_email")["licenses_alert_sent"] is False


def test_dropping_below_low_licenses_alerts_once_a_day_with_the_account_managers(
    pipeline: Pipeline, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    _reload(pipeline, "D001", licenses=20, active=16, low_licenses=4, account_managers=MANAGERS)
    _, result = _sensor_run(pipeline, instance, "D001", clean_file())  # 3 available
    outcome, alert = pipeline.smtp.wait_for(2)
    assert "SUCCESSFUL" in outcome["Subject"]
    assert "licenses running low" in alert["Subject"] and "ENT-D001" in alert["Subject"]
    assert "3 of 20 available" in alert["Subject"]
    assert alert["To"] == CONTACTS.format(code="d001")
    assert alert["Cc"] == ", ".join(MANAGERS)
    assert _license_lines(alert.get_content()) == _exported(capsys, "D001")[:1]
    assert materialization(result, "district_email")["licenses_alert_sent"] is True

    more = builders.csv_bytes([builders.row("STU-9001")])  # 2 available: still low
    _, result = _sensor_run(pipeline, instance, "D001", more)
    mails = pipeline.smtp.wait_for(3)
    assert len(mails) == 3 and "SUCCESSFUL" in mails[2]["Subject"]  # no second alert today
    assert _license_lines(mails[2].get_content())[0] == ("ENT-D001", 18, 20, 2)
    assert "already alerted" in str(materialization(result, "district_email")["licenses_alert"])


def test_no_license_available_rows_alert_even_after_the_days_alert_once_per_upload(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    _reload(pipeline, "D002", licenses=18, active=16, low_licenses=4)  # no account managers
    _sensor_run(pipeline, instance, "D002", clean_file())  # 1 available: the day's alert
    _, day_alert = pipeline.smtp.wait_for(2)
    assert "licenses running low" in day_alert["Subject"]
    assert day_alert["Cc"] == OPERATORS  # the operators stand in for account managers

    short = builders.csv_bytes([builders.row("STU-9001"), builders.row("STU-9002")])
    key, _ = _sensor_run(pipeline, instance, "D002", short)
    mails = pipeline.smtp.wait_for(4)
    outcome, alert = mails[2], mails[3]
    assert "PARTIALLY" in outcome["Subject"] and "NO_LICENSE_AVAILABLE" in outcome.get_content()
    assert "licenses running low" in alert["Subject"] and "0 of 18 available" in alert["Subject"]
    assert (alert["To"], alert["Cc"]) == (CONTACTS.format(code="d002"), OPERATORS)
    text = " ".join(alert.get_content().split())
    assert f"Upload {key} of District D002 (D002) had 1 row refused with NO_LICENSE_AVAILABLE" in (
        text
    )

    again = pipeline.run_upload(instance, key)  # a re-execution of that upload's run
    assert again.success
    assert "already alerted" in str(materialization(again, "district_email")["licenses_alert"])
    assert len(pipeline.smtp.messages) == 4
