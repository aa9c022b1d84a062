"""The change report's file: neutralised exactly as the error file, CSV-quoted, the header
alone when nothing changed; its name; the emails that point to it."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pandas as pd
import pytest

from eams_pipeline.core.change_file import HEADER, Change, render_change_file
from eams_pipeline.core.error_file import RISKY_LEADING, neutralise_cell, render_error_file
from eams_pipeline.core.names import change_report_name
from eams_pipeline.core.notifications import build_revert_email, build_upload_email
from eams_pipeline.core.upload_retention import KnownUpload, StoredFile, report_files_to_remove

RISKY = ["=1+2", "+1", "-1", "-123", "@SUM(A1)", "|cmd", "%x", "\tx", "\rx", "=a|b", "-1,5"]
SAFE = ["Smith", "'quoted", "a=b", "1-2", "", "O'Brien, Jr.", 'say "hi"']


def _cells(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode("utf-8"), newline="")))


def _line(value: str) -> bytes:
    """One query line (CSV, as COPY writes it: a value with a CR or LF quoted) with `value`
    in every free-text cell."""
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerow(
        ["7", value, "updated", "Last Name", value, value]
    )
    return out.getvalue().encode("utf-8")


@pytest.mark.parametrize("value", RISKY + SAFE)
def test_cells_are_neutralised_as_the_error_file_does(value: str) -> None:
    errors = pd.DataFrame(
        {"line": [7], "student_id": [value], "column": [value], "code": ["X"], "message": [value]}
    )
    [_, error_line] = _cells(render_error_file(errors))
    [header, line] = _cells(render_change_file(_line(value)).content)
    assert header == list(HEADER)
    assert line == ["7", error_line[1], "updated", "Last Name", error_line[4], error_line[4]]
    if value in RISKY:
        assert line[1] != value and line[1].startswith("'")
    else:
        assert line[1] == value  # quoted by the CSV, unchanged


def test_the_vectorised_filter_covers_every_character_the_rule_changes() -> None:
    for code in range(0x20000):
        ch = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue
        if ch not in RISKY_LEADING:
            assert neutralise_cell(ch + "x") == ch + "x", hex(code)


def test_nothing_changed_is_the_header_alone_with_crlf() -> None:
    report = render_change_file(b"")
    assert report.content == b"Line Number,Student ID,Change,Field,Before,After\r\n"
    assert (report.lines, report.changes) == (0, {})


def test_lines_and_counts_per_change_in_the_vocabulary_order() -> None:
    lines = (
        b"2,S1,moved,School Code,101,102\n2,S1,updated,Grade,5,6\n3,S2,added,Status,,active\n"
        b",S9,deactivated_missing,Status,active,deactivated\n"
    )
    report = render_change_file(lines)
    assert report.lines == 4
    assert list(report.changes.items()) == [
        ("added", 1),
        ("deactivated_missing", 1),
        ("moved", 1),
        ("updated", 1),
    ]
    assert _cells(report.content)[4] == [
        "",
        "S9",
        "deactivated_missing",
        "Status",
        "active",
        "deactivated",
    ]
    assert report.content.count(b"\r\n") == 5
    assert {str(c) for c in Change} == {
        "added",
        "activated",
        "deactivated",
        "deactivated_missing",
        "moved",
        "updated",
    }


def test_names() -> None:
    key = "D001-20260114T020000123456Z"
    assert change_report_name(key) == "students_changes_D001-20260114T020000123456Z.csv"
    assert change_report_name(key, revert=True) == (
        "students_changes_D001-20260114T020000123456Z_revert.csv"
    )


SUMMARY = {
    "upload_id": 42,
    "district": "D001",
    "rows": 3,
    "added": 1,
    "activated": 0,
    "deactivated": 0,
    "updated": 2,
    "unchanged": 0,
    "errors": 0,
    "error_codes": {},
}
PATH = "/d001/reports/students_changes_D001-20260114T020000123456Z.csv"


def _upload_email(status: str, **summary: object) -> str:
    return build_upload_email(
        district_code="D001",
        district_name="Springfield",
        contacts=["a@d.example"],
        sender="eams@v.example",
        summary={**SUMMARY, "status": status, **summary},
        error_file_path=None,
        upload_key="D001-20260114T020000123456Z",
        change_report_path=PATH,
    ).get_content()


def test_the_outcome_email_names_the_change_report_of_an_applied_upload() -> None:
    body = _upload_email("processed")
    assert f"\n  {PATH}\n" in body and "change report" in body
    partial = _upload_email("partially_processed", errors=1, error_codes={"INVALID_GRADE": 1})
    assert f"\n  {PATH}\n" in partial
    # nothing applied: no change report is pointed to
    for status in ("held", "discarded"):
        assert PATH not in _upload_email(status)


def test_the_revert_email_names_the_revert_report() -> None:
    body = build_revert_email(
        district_code="D001",
        district_name="Springfield",
        contacts=["a@d.example"],
        sender="eams@v.example",
        upload_key="D001-20260114T020000123456Z",
        reverted_by="carol",
        reverted_at=None,
        counts={"restored": 2, "created_deactivated": 1},
        change_report_path=PATH.replace(".csv", "_revert.csv"),
    ).get_content()
    assert PATH.replace(".csv", "_revert.csv") in body


def test_retention_removes_the_change_reports_with_the_error_files() -> None:
    key = "D001-20260114T020000123456Z"
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    old = now - dt.timedelta(days=40)
    upload = KnownUpload(1, key, "reverted", old, archived=True)
    files = [
        StoredFile(change_report_name(key), old),
        StoredFile(change_report_name(key, revert=True), old),
        StoredFile(change_report_name(key, revert=True), now),  # written since: kept
        StoredFile("students_changes_D001-20260114T020000123456Z_other.csv", old),  # not ours
    ]
    assert report_files_to_remove(files, {key: upload}, now, 30) == sorted(
        [change_report_name(key), change_report_name(key, revert=True)]
    )
