"""`eams process --changes-out` and `eams uploads revert --changes-dir`: the change report
as a local file, through the same service as the Dagster asset."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import yaml

from eams_pipeline_tests.builders import csv_bytes, district_doc, existing_student, row
from eams_pipeline_tests.change_history_oracle import expected_lines, read_report
from eams_pipeline_tests.cli_runner import eams


def _district(db_url: str, tmp_path: Path) -> None:
    setup = tmp_path / "setup.yaml"
    existing = [existing_student("E1"), existing_student("E2", status="deactivated")]
    setup.write_text(yaml.safe_dump({"districts": [district_doc(existing=existing)]}))
    assert eams("setup", "load", str(setup), cwd=tmp_path, url=db_url).returncode == 0


def test_process_and_revert_write_the_change_reports(db_url: str, tmp_path: Path) -> None:
    _district(db_url, tmp_path)
    upload = tmp_path / "students.csv"
    upload.write_bytes(
        csv_bytes(
            [
                row("E1", "D", password=""),
                row("E2", password="", school_code="102"),
                row("N1", password="first-pw-1"),
            ]
        )
    )
    out = tmp_path / "changes.csv"
    done = eams(
        "process",
        "--district",
        "D1",
        str(upload),
        "--changes-out",
        str(out),
        cwd=tmp_path,
        url=db_url,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["change_report"] == str(out)
    with psycopg.connect(db_url) as conn:
        key = conn.execute("SELECT upload_key FROM uploads").fetchone()[0]
        lines = read_report(out.read_bytes())
        assert lines == expected_lines(conn, key)
    assert lines[1:] == [
        ["2", "E1", "deactivated", "Status", "active", "deactivated"],
        ["3", "E2", "activated", "Status", "deactivated", "active"],
        ["3", "E2", "moved", "School Code", "101", "102"],
        ["4", "N1", "added", "Status", "", "active"],
    ]
    assert b"first-pw-1" not in out.read_bytes()

    reports = tmp_path / "reports"
    reports.mkdir()
    reverted = eams(
        "uploads",
        "revert",
        key,
        "--by",
        "erin",
        "--no-email",
        "--changes-dir",
        str(reports),
        cwd=tmp_path,
        url=db_url,
    )
    assert reverted.returncode == 0, reverted.stderr
    written = reports / f"students_changes_{key}_revert.csv"
    assert json.loads(reverted.stdout)["reverted"][0]["change_report"] == str(written)
    with psycopg.connect(db_url) as conn:
        assert read_report(written.read_bytes()) == expected_lines(conn, key, revert=True)


def test_a_dry_run_has_no_change_report(db_url: str, tmp_path: Path) -> None:
    _district(db_url, tmp_path)
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("E1", "D", password="")]))
    out = tmp_path / "changes.csv"
    done = eams(
        "process",
        "--district",
        "D1",
        str(upload),
        "--dry-run",
        "--changes-out",
        str(out),
        cwd=tmp_path,
        url=db_url,
    )
    assert done.returncode == 1
    assert "--changes-out: a dry run changes nothing" in done.stderr
    assert not out.exists()


def test_a_rejected_file_writes_no_change_report(db_url: str, tmp_path: Path) -> None:
    _district(db_url, tmp_path)
    upload = tmp_path / "students.csv"
    upload.write_bytes(b"School,ID\r\n1,2\r\n")
    out = tmp_path / "changes.csv"
    done = eams(
        "process",
        "--district",
        "D1",
        str(upload),
        "--changes-out",
        str(out),
        cwd=tmp_path,
        url=db_url,
    )
    assert done.returncode == 2
    assert json.loads(done.stdout)["change_report"] is None
    assert not out.exists()
