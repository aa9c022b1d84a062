"""Every failure of `eams` is one line on stderr, `eams: error: <message>`, exit code 1,
never a traceback; an unknown district code lists the close matches; `eams history` tells
a student the district never had from one no upload changed; a dry run of `eams process`
writes no file and records no upload unless --errors-out is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eams_pipeline_tests.builders import csv_bytes, district_doc, existing_student, row
from eams_pipeline_tests.cli.run_eams import load_districts
from eams_pipeline_tests.cli_runner import eams


@pytest.fixture
def districts(db_url: str, tmp_path: Path) -> str:
    load_districts(
        db_url,
        tmp_path,
        district_doc(code="D001", existing=[existing_student("E1", order="ENT-D001")]),
        district_doc(code="D002"),
        district_doc(code="OGDEN"),
    )
    return db_url


def _failed(done, message: str) -> None:
    """Exit 1, nothing on stdout, exactly one line on stderr: `eams: error: <message>`."""
    assert (done.returncode, done.stdout) == (1, ""), done.stdout + done.stderr
    assert done.stderr == f"eams: error: {message}\n"


def test_usage_errors(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"
    _failed(
        eams("process", cwd=tmp_path, url=url),
        "Missing argument 'FILE'. (see 'eams process --help')",
    )
    _failed(eams("nosuch", cwd=tmp_path, url=url), "No such command 'nosuch'. (see 'eams --help')")
    _failed(
        eams("history", "--district", "D1", "--student", "a b", cwd=tmp_path, url=url),
        "Invalid value for '--student': 'a b' is not a Student ID (1 to 32 of A-Z a-z 0-9 . _ -)"
        " (see 'eams history --help')",
    )
    down = eams("districts", "list", cwd=tmp_path, url=url)
    assert down.returncode == 1 and down.stderr.startswith("eams: error: ")
    assert "Traceback" not in down.stderr
    # libpq's hint goes on the next line, indented under the error
    first, *rest = down.stderr.splitlines()
    assert "Connection refused" in first and all(line.startswith("  ") for line in rest)


def test_an_unknown_district_lists_the_close_matches(districts, tmp_path) -> None:
    url = districts
    _failed(
        eams("uploads", "list", "--district", "D0001", cwd=tmp_path, url=url),
        "unknown district 'D0001'; did you mean D001, D002?",
    )
    _failed(
        eams("export", "students", "--district", "ogdn", cwd=tmp_path, url=url),
        "unknown district 'ogdn'; did you mean OGDEN?",
    )
    _failed(
        eams("history", "--district", "ZZZZZZ", "--student", "E1", cwd=tmp_path, url=url),
        "unknown district 'ZZZZZZ' (`eams districts list` shows them)",
    )
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1")]))
    _failed(
        eams("process", "--district", "d001", str(upload), cwd=tmp_path, url=url),
        "unknown district 'd001'; did you mean D001?",
    )
    assert json.loads(eams("uploads", "list", "--district", "D001", "--json",
                           cwd=tmp_path, url=url).stdout) == []  # fmt: skip


def test_unknown_uploads_and_students(districts, tmp_path) -> None:
    url = districts
    for command in ("show", "approve", "discard", "revert"):
        done = eams("uploads", command, "D001-nope", cwd=tmp_path, url=url)
        assert done.returncode == 1 and done.stdout == "", command
        assert done.stderr.startswith("eams: error: no upload ") and "D001-nope" in done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
    for extra in ((), ("--json",)):
        asked = ("history", "--district", "D001", "--student", "NOPE1", *extra)
        _failed(
            eams(*asked, cwd=tmp_path, url=url),
            "unknown student 'NOPE1': district D001 never had a student with this Student ID",
        )
    # a student of the master data that no upload changed is known
    known = eams("history", "--district", "D001", "--student", "E1", cwd=tmp_path, url=url)
    assert known.returncode == 0
    assert known.stdout.startswith("no upload changed student E1 of D001")
    # a student of another district is unknown in this one
    _failed(
        eams("history", "--district", "D002", "--student", "E1", cwd=tmp_path, url=url),
        "unknown student 'E1': district D002 never had a student with this Student ID",
    )


def test_a_dry_run_writes_no_file_and_uses_no_upload_id(districts, tmp_path) -> None:
    url = districts
    work = tmp_path / "work"
    work.mkdir()
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1"), row("N2", grade="15")]))

    def process(*extra: str) -> dict:
        done = eams("process", "--district", "D001", str(upload), *extra, cwd=work, url=url)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first = process()
    assert first["error_file"] == f"students_errors_{first['upload_id']}.csv"
    (work / first["error_file"]).unlink()

    dry = process("--dry-run")
    assert (dry["upload_id"], dry["error_file"], dry["errors"]) == (None, None, 1)
    assert list(work.iterdir()) == []
    chosen = tmp_path / "dry-errors.csv"
    dry = process("--dry-run", "--errors-out", str(chosen))
    assert dry["error_file"] == str(chosen) and "INVALID_GRADE" in chosen.read_text()
    assert list(work.iterdir()) == []

    # the dry runs recorded no upload: the next one follows the first
    assert process()["upload_id"] == first["upload_id"] + 1
    listed = eams("uploads", "list", "--district", "D001", "--json", cwd=work, url=url)
    assert len(json.loads(listed.stdout)) == 2
