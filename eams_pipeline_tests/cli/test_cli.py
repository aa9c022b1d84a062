"""The `eams` command line of SPEC §8, run as a user runs it (a real process)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eams_pipeline.db import migrations
from eams_pipeline_tests.builders import csv_bytes, district_doc, existing_student, row
from eams_pipeline_tests.cli_runner import eams

SUMMARY_KEYS = [
    "upload_id",
    "district",
    "status",
    "rows",
    "added",
    "activated",
    "deactivated",
    "updated",
    "unchanged",
    "errors",
    "error_codes",
    "error_file",
    "deactivated_missing",
    "guard",
]


@pytest.fixture
def district(db_url: str, tmp_path: Path) -> str:
    import yaml

    setup = tmp_path / "setup.yaml"
    setup.write_text(
        yaml.safe_dump({"districts": [district_doc(licenses=3, existing=[existing_student("E1")])]})
    )
    assert eams("setup", "load", str(setup), cwd=tmp_path, url=db_url).returncode == 0
    return db_url


def test_db_upgrade_creates_and_is_harmless_twice(db_url: str, tmp_path: Path) -> None:
    fresh = db_url.replace("dbname=", "dbname=x")  # a database that does not exist yet
    first = eams("db", "upgrade", cwd=tmp_path, url=fresh)
    assert first.returncode == 0, first.stderr
    every = [m.version for m in migrations.available()]
    assert json.loads(first.stderr.splitlines()[-1])["migrations_applied"] == every
    second = eams("db", "upgrade", cwd=tmp_path, url=fresh)
    assert json.loads(second.stderr.splitlines()[-1]) == {
        "database_created": False,
        "migrations_applied": [],
    }
    import psycopg
    from psycopg import sql

    with psycopg.connect(db_url, autocommit=True) as conn:
        name = psycopg.conninfo.conninfo_to_dict(fresh)["dbname"]
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_process_prints_the_summary_and_writes_the_error_file(
    district: str, tmp_path: Path
) -> None:
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1"), row("=1+1", username="formula"), row("E1", "D")]))
    errors_out = tmp_path / "out" / "errors.csv"
    errors_out.parent.mkdir()
    done = eams(
        "process",
        "--district",
        "D1",
        str(upload),
        "--errors-out",
        str(errors_out),
        cwd=tmp_path,
        url=district,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert list(summary) == SUMMARY_KEYS
    assert summary["status"] == "partially_processed"
    assert (summary["rows"], summary["added"], summary["deactivated"], summary["errors"]) == (
        3,
        1,
        1,
        1,
    )
    assert summary["error_codes"] == {"INVALID_STUDENT_ID": 1}
    assert summary["error_file"] == str(errors_out)
    lines = list(csv.reader(io.StringIO(errors_out.read_text(encoding="utf-8"))))
    assert lines[0] == ["Line Number", "Student ID", "Column", "Error Code", "Message"]
    # the Student ID cell would be a formula: it is neutralised
    assert lines[1][:4] == ["3", "'=1+1", "Student ID", "INVALID_STUDENT_ID"]


def test_a_clean_file_has_no_error_file(district: str, tmp_path: Path) -> None:
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1")]))
    done = eams("process", "--district", "D1", str(upload), cwd=tmp_path, url=district)
    summary = json.loads(done.stdout)
    assert (done.returncode, summary["status"], summary["error_file"]) == (0, "processed", None)
    assert list(tmp_path.glob("students_errors_*.csv")) == []


def test_a_rejected_file_exits_2_with_its_error_file(district: str, tmp_path: Path) -> None:
    upload = tmp_path / "students.csv"
    upload.write_bytes(b"Student ID,School Code\nS1,101\n")
    done = eams("process", "--district", "D1", str(upload), cwd=tmp_path, url=district)
    assert done.returncode == 2
    summary = json.loads(done.stdout)
    assert summary["status"] == "rejected" and summary["error_codes"] == {"HEADER_MISMATCH": 1}
    written = tmp_path / summary["error_file"]
    assert "HEADER_MISMATCH" in written.read_text()


def test_dry_run_changes_nothing(district: str, tmp_path: Path) -> None:
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1"), row("E1", "D")]))
    before = eams("export", "students", "--district", "D1", cwd=tmp_path, url=district).stdout
    dry = eams("process", "--district", "D1", str(upload), "--dry-run", cwd=tmp_path, url=district)
    assert dry.returncode == 0
    assert json.loads(dry.stdout)["added"] == 1
    after = eams("export", "students", "--district", "D1", cwd=tmp_path, url=district).stdout
    assert after == before


def test_operational_failures_exit_1(district: str, tmp_path: Path) -> None:
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1")]))
    unknown = eams("process", "--district", "NOPE", str(upload), cwd=tmp_path, url=district)
    assert unknown.returncode == 1 and "unknown district" in unknown.stderr
    down = eams(
        "process",
        "--district",
        "D1",
        str(upload),
        cwd=tmp_path,
        url="postgresql://postgres@127.0.0.1:1/none?connect_timeout=2",
    )
    assert down.returncode == 1
    usage = eams("process", cwd=tmp_path, url=district)
    assert usage.returncode == 1


def test_exports_show_the_resulting_state(district: str, tmp_path: Path) -> None:
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1", class_name="Room 4"), row("E1", "D")]))
    eams("process", "--district", "D1", str(upload), cwd=tmp_path, url=district)
    students = list(
        csv.reader(
            io.StringIO(
                eams("export", "students", "--district", "D1", cwd=tmp_path, url=district).stdout
            )
        )
    )
    assert students[0] == [
        "School Code",
        "Student ID",
        "Last Name",
        "First Name",
        "Middle Name",
        "Grade",
        "Username",
        "Email",
        "Class Name",
        "Status",
        "Order",
    ]
    assert students[1:] == [
        ["101", "E1", "LastE1", "First", "", "5", "userE1", "", "", "deactivated", "ENT-D1"],
        ["101", "N1", "LastN1", "First", "", "5", "userN1", "", "Room 4", "active", "ENT-D1"],
    ]
    licenses = list(
        csv.reader(
            io.StringIO(
                eams("export", "licenses", "--district", "D1", cwd=tmp_path, url=district).stdout
            )
        )
    )
    assert licenses == [
        ["Order", "Kind", "School Code", "Licenses", "Used", "Available"],
        ["ENT-D1", "enterprise", "D1-HB", "3", "1", "2"],
        ["REG-D1", "regular", "101", "50", "0", "50"],
    ]


def test_help_explains_each_command(tmp_path: Path) -> None:
    out = eams("--help", cwd=tmp_path, url="").stdout
    for command in ("db", "setup", "process", "export"):
        assert command in out
    assert "--dry-run" in eams("process", "--help", cwd=tmp_path, url="").stdout


def test_process_verbose_shows_progress_on_stderr_and_only_the_json_on_stdout(
    district: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAMS_HASH_BATCH_SIZE", "1")
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1"), row("N2", password="other-secret")]))
    done = eams("process", "--district", "D1", "--verbose", str(upload), cwd=tmp_path, url=district)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1  # exactly one JSON object on standard output
    assert json.loads(done.stdout)["added"] == 2
    lines = done.stderr.splitlines()
    assert all(line.startswith("eams: ") for line in lines), lines
    assert "eams: hash: 0/2 (0%), 0.0/s" in lines
    assert any(line.startswith("eams: hash: 2/2 (100%), ") for line in lines), lines
    for step in ("read", "validate", "hash", "lock", "snapshot", "plan", "apply", "record"):
        assert any(line.startswith(f"eams: {step} done in ") for line in lines), (step, lines)
    assert lines[-1].startswith("eams: processed in ")
    assert "other-secret" not in done.stderr and "secret-pw" not in done.stderr

    # not a terminal and no --verbose: nothing on stderr
    upload.write_bytes(csv_bytes([row("N3")]))
    quiet = eams("process", "--district", "D1", str(upload), cwd=tmp_path, url=district)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout)["rows"] == 1


def test_help_does_not_import_the_data_libraries(tmp_path: Path) -> None:
    # start-up: `eams --help` (and every command until it runs) imports no pandas, pandera,
    # pyarrow, psycopg, argon2 nor dagster
    probe = (
        "import sys; from eams_pipeline import cli; "
        "heavy = {'pandas', 'pandera', 'pyarrow', 'psycopg', 'argon2', 'dagster', 'rich'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
