"""build_change_report on the real database: a full roster's absent students
(deactivated_missing, no line number, last), their revert, the uploads that have no
report, and an upload of nothing but unchanged rows."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from eams_pipeline.services.change_report import NoChangeReport, build_change_report
from eams_pipeline.services.revert import revert_upload
from eams_pipeline_tests.builders import district_doc, existing_student, load, row, run
from eams_pipeline_tests.change_history_oracle import expected_lines, read_report

T0 = dt.datetime(2026, 1, 14, 2, 0, tzinfo=dt.UTC)


def test_a_full_roster_lists_its_absent_students_last_without_a_line_number(
    conn: psycopg.Connection,
) -> None:
    existing = [existing_student(s) for s in ("E3", "E1", "E2", "E4")]
    load(conn, district_doc(licenses=10, existing=existing, mode="full_roster"))
    result = run(conn, [row("E2", password="", grade="6"), row("N1")], key="D1-k1", received_at=T0)
    assert result.deactivated_missing == 3
    report = build_change_report(conn, "D1-k1")
    lines = read_report(report.content)
    assert lines == expected_lines(conn, "D1-k1")
    assert lines[1:] == [
        ["2", "E2", "updated", "Grade", "5", "6"],
        ["3", "N1", "added", "Status", "", "active"],
        ["", "E1", "deactivated_missing", "Status", "active", "deactivated"],
        ["", "E3", "deactivated_missing", "Status", "active", "deactivated"],
        ["", "E4", "deactivated_missing", "Status", "active", "deactivated"],
    ]
    assert report.changes == {"added": 1, "deactivated_missing": 3, "updated": 1}
    assert report.name == "students_changes_D1-k1.csv"

    revert_upload(conn, "D1-k1", reverted_by="erin")
    back = build_change_report(conn, "D1-k1", revert=True)
    assert back.name == "students_changes_D1-k1_revert.csv"
    lines = read_report(back.content)
    assert lines == expected_lines(conn, "D1-k1", revert=True)
    assert lines[1:] == [
        ["2", "E2", "updated", "Grade", "6", "5"],
        ["3", "N1", "deactivated", "Status", "active", "deactivated"],
        ["", "E1", "activated", "Status", "deactivated", "active"],
        ["", "E3", "activated", "Status", "deactivated", "active"],
        ["", "E4", "activated", "Status", "deactivated", "active"],
    ]
    # the upload's own report is still what it applied
    assert build_change_report(conn, "D1-k1").content == report.content


def test_unchanged_rows_give_the_header_alone(conn: psycopg.Connection) -> None:
    load(conn, district_doc(existing=[existing_student("E1")]))
    result = run(conn, [row("E1", password="")], key="D1-k1", received_at=T0)
    assert result.counts["unchanged"] == 1
    report = build_change_report(conn, "D1-k1")
    assert report.content == b"Line Number,Student ID,Change,Field,Before,After\r\n"
    assert report.lines == 0


def test_uploads_that_changed_nothing_have_no_report(conn: psycopg.Connection) -> None:
    load(conn, district_doc(existing=[existing_student("E1")]))
    run(conn, b"School,ID\r\n1,2\r\n", key="D1-rejected", received_at=T0)
    with pytest.raises(NoChangeReport, match="rejected"):
        build_change_report(conn, "D1-rejected")
    run(conn, [row("E1", "D", password="")], key="D1-applied", received_at=T0)
    with pytest.raises(NoChangeReport, match="not reverted"):
        build_change_report(conn, "D1-applied", revert=True)
    with pytest.raises(NoChangeReport, match="no upload"):
        build_change_report(conn, "D1-nothing")
