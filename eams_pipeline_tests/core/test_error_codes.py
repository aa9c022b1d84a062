"""Every error code of SPEC §5, end to end, with the line it names."""

from __future__ import annotations

import pytest

from eams_pipeline.core.template import HEADER
from eams_pipeline_tests.builders import (
    assert_license_invariant,
    csv_bytes,
    district_doc,
    existing_student,
    load,
    row,
    run,
    students,
)


@pytest.fixture
def district(conn):
    load(
        conn,
        district_doc(
            licenses=5,
            existing=[
                existing_student("E1"),
                existing_student("E2", status="deactivated"),
            ],
        ),
        district_doc(
            code="D2", existing=[existing_student("OTHER", username="taken-name", order="ENT-D2")]
        ),
    )
    return conn


def _errors(result) -> list[tuple[int, str, str, str]]:
    return [(int(e.line), e.student_id, e.column, e.code) for e in result.errors.itertuples()]


@pytest.mark.parametrize(
    ("values", "column", "code"),
    [
        ({"last_name": ""}, "Last Name", "REQUIRED_FIELD_MISSING"),
        ({"school_code": "  "}, "School Code", "REQUIRED_FIELD_MISSING"),
        ({"last_name": "x" * 61}, "Last Name", "FIELD_TOO_LONG"),
        ({"class_name": "c" * 101}, "Class Name", "FIELD_TOO_LONG"),
        ({"student_id": "S 1"}, "Student ID", "INVALID_STUDENT_ID"),
        ({"grade": "13"}, "Grade", "INVALID_GRADE"),
        ({"grade": "00"}, "Grade", "INVALID_GRADE"),
        ({"username": "no spaces"}, "Username", "INVALID_USERNAME"),
        ({"username": "ab"}, "Username", "INVALID_USERNAME"),
        ({"password": "short"}, "Password", "INVALID_PASSWORD"),
        ({"password": "p" * 65}, "Password", "FIELD_TOO_LONG"),
        ({"email": "not-an-email"}, "Email", "INVALID_EMAIL"),
        ({"status": "Z"}, "Status", "INVALID_STATUS"),
        ({"password": ""}, "Password", "PASSWORD_REQUIRED"),
        ({"school_code": "999"}, "School Code", "SCHOOL_NOT_FOUND"),
        ({"school_code": "900"}, "School Code", "SCHOOL_NOT_FOUND"),  # closed
        ({"school_code": "D1-HB"}, "School Code", "SCHOOL_NOT_FOUND"),  # holding bin
        ({"school_code": "D2-HB"}, "School Code", "SCHOOL_NOT_FOUND"),  # other district
        ({"username": "TAKEN-NAME"}, "Username", "USERNAME_TAKEN"),
        ({"username": "userE1"}, "Username", "USERNAME_TAKEN"),
        ({"status": "D"}, "Status", "STUDENT_NOT_FOUND"),
        ({"status": "I"}, "Status", "STUDENT_NOT_FOUND"),
    ],
)
def test_row_error_on_the_third_line(district, values, column, code) -> None:
    middle = {**row("N2"), **values}
    rows = [row("N1"), middle, row("N3")]
    sid = middle["student_id"]
    result = run(district, rows)
    assert _errors(result) == [(3, sid.strip(), column, code)]
    assert result.counts["errors"] == 1 and result.counts["added"] == 2
    assert result.status == "partially_processed"
    assert "N2" not in students(district) and {"N1", "N3"} <= students(district).keys()


def test_student_exists(district) -> None:
    result = run(district, [row("E1", "X"), row("E2", "X")])
    assert _errors(result) == [
        (2, "E1", "Status", "STUDENT_EXISTS"),
        (3, "E2", "Status", "STUDENT_EXISTS"),
    ]


def test_duplicates_fail_every_row_that_shares_the_value(district) -> None:
    result = run(
        district,
        [
            row("N1"),
            row("N2", username="same"),
            row("N1", username="other"),
            row("N4", username="SAME"),
        ],
    )
    assert _errors(result) == [
        (2, "N1", "Student ID", "DUPLICATE_STUDENT_ID"),
        (3, "N2", "Username", "DUPLICATE_USERNAME"),
        (4, "N1", "Student ID", "DUPLICATE_STUDENT_ID"),
        (5, "N4", "Username", "DUPLICATE_USERNAME"),
    ]
    assert students(district).keys() == {"E1", "E2"}


def test_a_row_carries_all_its_errors_in_column_order(district) -> None:
    result = run(district, [row("N1", grade="K1", email="@", status="Q", username="x")])
    assert [e[2:] for e in _errors(result)] == [
        ("Grade", "INVALID_GRADE"),
        ("Username", "INVALID_USERNAME"),
        ("Email", "INVALID_EMAIL"),
        ("Status", "INVALID_STATUS"),
    ]
    assert result.counts["errors"] == 1 and result.error_codes["INVALID_GRADE"] == 1


def test_wrong_field_count(district) -> None:
    data = csv_bytes([row("N1")]) + b"101,N2,Doe\r\n"
    result = run(district, data)
    assert _errors(result) == [(3, "N2", "", "WRONG_FIELD_COUNT")]
    assert result.counts == {
        "rows": 2,
        "added": 1,
        "activated": 0,
        "deactivated": 0,
        "updated": 0,
        "unchanged": 0,
        "errors": 1,
    }


def test_no_license_available(conn) -> None:
    load(conn, district_doc(licenses=1))
    result = run(conn, [row("N1"), row("N2")])
    assert _errors(result) == [(3, "N2", "Status", "NO_LICENSE_AVAILABLE")]
    assert_license_invariant(conn)


@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (b"", "FILE_EMPTY", 1),
        (",".join(HEADER).encode() + b"\n", "FILE_EMPTY", 2),
        (b"School Code,Student ID\n101,S1\n", "HEADER_MISMATCH", 1),
        (csv_bytes([row("N1")]) + "101,N2,M\xfcller".encode("latin-1"), "FILE_ENCODING", 3),
    ],
)
def test_file_level_errors_reject_the_whole_file(district, data, code, line) -> None:
    before = students(district)
    result = run(district, data)
    assert result.status == "rejected"
    assert _errors(result) == [(line, "", "", code)]
    assert result.error_codes == {code: 1}
    assert students(district) == before
    counts = result.counts
    assert counts["rows"] == counts["errors"]
    assert counts["added"] == counts["updated"] == counts["unchanged"] == 0


def test_messages_never_contain_the_password(district) -> None:
    result = run(district, [row("N1", password="abc12"), row("N2", password="q" * 70)])
    assert set(result.error_codes) == {"INVALID_PASSWORD", "FIELD_TOO_LONG"}
    text = " ".join(result.errors["message"])
    assert "abc12" not in text and "q" * 70 not in text
