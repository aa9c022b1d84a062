"""On a terminal, `eams process`, `uploads approve|discard|revert` print a few lines for a
person; with --json, or when standard output is not a terminal, the one JSON object of
SPEC §8. The terminal is real: a pseudo-terminal the `eams` process writes to."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eams_pipeline_tests.builders import csv_bytes, district_doc, existing_student, row
from eams_pipeline_tests.cli.run_eams import eams_on_terminal, load_districts
from eams_pipeline_tests.cli_runner import eams

IDS = [f"S{i:02d}" for i in range(10)]
SUMMARY_KEYS = [
    "upload_id", "district", "status", "rows", "added", "activated", "deactivated",
    "updated", "unchanged", "errors", "error_codes", "error_file", "deactivated_missing",
    "guard",
]  # fmt: skip
KEY = re.compile(r"D1-\d{8}T\d{12}Z")


@pytest.fixture
def district(db_url: str, tmp_path: Path) -> str:
    """Ten active students, the guard's default percentages with a floor of 1 student, and
    a first applied upload (the guard's baseline)."""
    load_districts(
        db_url,
        tmp_path,
        district_doc(
            licenses=20, existing=[existing_student(s) for s in IDS], guard={"min_count": 1}
        ),
    )
    base = _file(tmp_path, "base.csv", [row(s, password="") for s in IDS])
    done = eams("process", "--district", "D1", str(base), cwd=tmp_path, url=db_url)
    assert done.returncode == 0, done.stderr
    return db_url


def _file(tmp_path: Path, name: str, rows: list[dict[str, str]]) -> Path:
    path = tmp_path / name
    path.write_bytes(csv_bytes(rows))
    return path


def _with_a_row_error() -> list[dict[str, str]]:
    return [*(row(s, password="") for s in IDS), row("N1", grade="15")]


def _deactivating_two() -> list[dict[str, str]]:
    rows = [row(s, password="") for s in IDS]
    rows[1] = row("S01", "D", password="")
    rows[2] = row("S02", "D", password="")
    return rows  # 2 of 10 active students: 20% > 10%


def test_process_on_a_terminal_prints_a_summary_not_json(district, tmp_path) -> None:
    path = _file(tmp_path, "students.csv", _with_a_row_error())
    shown = eams_on_terminal("process", "--district", "D1", str(path), cwd=tmp_path, url=district)
    assert shown.returncode == 0, shown.output
    lines = shown.output.splitlines()
    [head] = [line for line in lines if line.startswith("Partially processed")]
    key = KEY.search(head).group()
    assert head == f"Partially processed (the valid rows applied): upload {key} of D1"
    assert (
        "  11 rows: 0 added, 0 activated, 0 deactivated, 0 updated, 10 unchanged, 1 errors"
        in lines
    )
    assert "  error codes: INVALID_GRADE 1" in lines
    [file_line] = [line for line in lines if line.startswith("  error file: ")]
    written = tmp_path / file_line.removeprefix("  error file: ")
    assert "INVALID_GRADE" in written.read_text()
    assert "{" not in shown.output  # no JSON
    assert "read done in" in shown.output  # stderr is the terminal too: the steps' progress


def test_json_on_a_terminal_and_json_through_a_pipe(district, tmp_path) -> None:
    path = _file(tmp_path, "students.csv", _with_a_row_error())
    forced = eams_on_terminal(
        "process", "--district", "D1", str(path), "--json",
        cwd=tmp_path, url=district, stderr_on_terminal=False,
    )  # fmt: skip
    assert forced.returncode == 0, forced.output + forced.stderr
    summary = json.loads(forced.output)  # exactly one JSON object on the terminal
    assert list(summary) == SUMMARY_KEYS and summary["status"] == "partially_processed"
    piped = eams("process", "--district", "D1", str(path), cwd=tmp_path, url=district)
    assert piped.returncode == 0 and piped.stderr == ""
    assert list(json.loads(piped.stdout)) == SUMMARY_KEYS


def test_a_held_file_shows_the_rule_and_the_commands_that_decide(district, tmp_path) -> None:
    path = _file(tmp_path, "held.csv", _deactivating_two())
    held = eams_on_terminal("process", "--district", "D1", str(path), cwd=tmp_path, url=district)
    assert held.returncode == 3, held.output
    lines = held.output.splitlines()
    [head] = [line for line in lines if line.startswith("HELD")]
    key = KEY.search(head).group()
    assert head == f"HELD by the change guard (nothing applied): upload {key} of D1"
    assert (
        "  guard rule max_deactivated_pct: deactivates 2 of 10 active students, 20%, limit 10%"
        in lines
    )
    # not archived (an upload of `eams process`): the approve command names the file
    assert f"    eams uploads approve {key} --file {path} --by YOUR_NAME" in lines
    assert f"    eams uploads discard {key} --by YOUR_NAME" in lines

    approved = eams_on_terminal(
        "uploads", "approve", key, "--file", str(path), "--by", "alice", "--no-email",
        cwd=tmp_path, url=district,
    )  # fmt: skip
    assert approved.returncode == 0, approved.output
    lines = approved.output.splitlines()
    assert f"Processed: upload {key} of D1" in lines and "  approved by alice" in lines
    assert "  10 rows: 0 added, 0 activated, 2 deactivated, 0 updated, 8 unchanged, 0 errors" in (
        lines
    )

    again = _file(tmp_path, "again.csv", [row(s, "D", password="") for s in IDS[3:]])
    held = eams("process", "--district", "D1", str(again), cwd=tmp_path, url=district)
    assert held.returncode == 3, held.stderr
    listed = eams("uploads", "list", "--district", "D1", "--json", cwd=tmp_path, url=district)
    second = json.loads(listed.stdout)[0]["upload_key"]
    discarded = eams_on_terminal(
        "uploads", "discard", second, "--by", "carol", "--no-email", cwd=tmp_path, url=district
    )
    assert discarded.returncode == 0, discarded.output
    lines = discarded.output.splitlines()
    assert f"Discarded (nothing applied): upload {second} of D1" in lines
    assert "  discarded by carol" in lines


def test_a_rejected_file_and_a_dry_run_on_a_terminal(district, tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"Student,Name\nS1,x\n")
    rejected = eams_on_terminal("process", "--district", "D1", str(bad), cwd=tmp_path, url=district)
    assert rejected.returncode == 2, rejected.output
    lines = rejected.output.splitlines()
    assert any(re.fullmatch(r"REJECTED \(nothing applied\): upload D1-\S+ of D1", x) for x in lines)
    assert any(x.startswith("  HEADER_MISMATCH: ") for x in lines)
    assert any(x.startswith("  error file: students_errors_") for x in lines)

    path = _file(tmp_path, "students.csv", _with_a_row_error())
    before = sorted(p.name for p in tmp_path.iterdir())
    dry = eams_on_terminal(
        "process", "--district", "D1", str(path), "--dry-run", cwd=tmp_path, url=district
    )
    assert dry.returncode == 0, dry.output
    lines = dry.output.splitlines()
    assert "Dry run for D1 (nothing was changed): would be partially processed (the valid " \
        "rows applied)" in lines  # fmt: skip
    assert "  error file: not written (a dry run writes one with --errors-out PATH)" in lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before

    held = _file(tmp_path, "held.csv", _deactivating_two())
    dry = eams_on_terminal(
        "process", "--district", "D1", str(held), "--dry-run", cwd=tmp_path, url=district
    )
    assert dry.returncode == 3, dry.output
    assert "would be HELD by the change guard (nothing applied)" in dry.output
    assert "eams uploads approve" not in dry.output  # nothing was recorded to approve


def test_districts_list_and_version(db_url, tmp_path) -> None:
    load_districts(
        db_url,
        tmp_path,
        district_doc(code="D001", guard=None),
        district_doc(code="D002", guard={"max_updated_pct": 0}, mode="full_roster"),
        district_doc(code="D003"),  # the builders' default: the guard off
    )
    path = _file(tmp_path, "students.csv", [row("N1")])
    done = eams("process", "--district", "D002", str(path), cwd=tmp_path, url=db_url)
    assert done.returncode == 0, done.stderr

    shown = eams_on_terminal("districts", "list", cwd=tmp_path, url=db_url)
    assert shown.returncode == 0, shown.output
    lines = [re.sub(r" {2,}", " | ", x.strip()) for x in shown.output.splitlines()]
    assert lines[0] == "CODE | NAME | MODE | GUARD | LAST UPLOAD | RECEIVED | STATUS"
    assert lines[1] == "D001 | District D001 | incremental | default | -"
    assert re.fullmatch(
        r"D002 \| District D002 \| full_roster \| deactivated 10%, updated off, row drop 25%, "
        r"min 25 \| D002-\d{8}T\d{12}Z \| \d{4}-\d\d-\d\d \d\d:\d\dZ \| processed",
        lines[2],
    ), lines[2]
    assert lines[3] == "D003 | District D003 | incremental | off | -"

    listed = json.loads(eams("districts", "list", "--json", cwd=tmp_path, url=db_url).stdout)
    assert [(d["code"], d["mode"], d["last_status"]) for d in listed] == [
        ("D001", "incremental", None), ("D002", "full_roster", "processed"),
        ("D003", "incremental", None),
    ]  # fmt: skip
    assert listed[1]["guard"]["max_updated_pct"] is None

    from importlib.metadata import version

    shown = eams_on_terminal("--version", cwd=tmp_path, url=db_url)
    assert (shown.returncode, shown.output) == (0, f"eams {version('eams-pipeline')}\n")
