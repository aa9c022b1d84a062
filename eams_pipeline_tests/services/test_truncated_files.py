"""A file cut short (an export or upload that did not finish, a file claimed while its
writer was stalled) is rejected as FILE_TRUNCATED, never applied in part.

The rule: the file ends without a line break, and its last record is cut inside a quoted
value (the quote never closes) or has fewer fields than the header. A complete last row
without a final line break is accepted (many exports omit it). A file that ends inside a
UTF-8 character is truncated too (not FILE_ENCODING)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import eams_reference
from eams_pipeline.core.errors import ErrorCode
from eams_pipeline.core.reading import FileRejected, count_data_records, read_upload
from eams_pipeline.core.template import HEADER
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline_tests.builders import (
    csv_bytes,
    district_doc,
    existing_student,
    load,
    row,
    run,
    students,
)

HEADER_LINE = ",".join(HEADER)
GOOD = "101,S1,Doe,Jane,,5,jdoe,secret1,,,A"
PATHS = pytest.mark.parametrize("fallback", [False, True], ids=["fast", "csv-module"])


def _outcome(data: bytes, fallback: bool) -> tuple:
    try:
        parsed = read_upload(data, force_fallback=fallback)
    except FileRejected as err:
        return (err.code, err.line, err.message)
    return ("accepted", parsed.total_rows, len(parsed.malformed))


@PATHS
@pytest.mark.parametrize(
    ("tail", "line", "words"),
    [
        ("101,S2,Do", 3, "3 of the template's 11 fields"),  # mid-row
        ("101,S2,Doe,Jane,,5,jdoe2,secret1,,", 3, "10 of the template's 11 fields"),
        ('101,S2,"Doe', 3, "inside a quoted value"),  # mid-quote
        ('101,S2,Doe,"Jane\r\nMa', 3, "inside a quoted value"),  # a quote over lines, cut
        ("1", 3, "1 of the template's 11 fields"),
    ],
)
def test_a_last_record_cut_without_a_line_break_is_truncated(
    fallback: bool, tail: str, line: int, words: str
) -> None:
    for end in ("\n", "\r\n"):
        data = (HEADER_LINE + end + GOOD + end + tail).encode()
        code, got_line, message = _outcome(data, fallback)
        assert (code, got_line) == (ErrorCode.FILE_TRUNCATED, line)
        assert words in message and f"line {line}" in message
        assert "Nothing was applied" in message
        assert count_data_records(data) == 2  # the counts of the rejected file


@PATHS
@pytest.mark.parametrize(
    "data",
    [
        (HEADER_LINE + "\n" + GOOD).encode(),  # a complete last row, no final line break
        (HEADER_LINE + "\r\n" + GOOD + '\r\n101,S2,Doe,"Ja\nne",,5,j2,secret1,,,"A"').encode(),
        (HEADER_LINE + "\n" + GOOD + "\n101,S2,too,few\n").encode(),  # a line break: a row error
        (HEADER_LINE + "\n" + GOOD + '\n101,S2,"unclosed\n').encode(),  # ends in a line break
        (HEADER_LINE + "\n" + GOOD + "\r").encode(),  # CR line ends (Excel for Mac)
        (HEADER_LINE + "\n" + GOOD + "\n  \t ").encode(),  # trailing padding: a row error
    ],
)
def test_complete_files_and_short_rows_with_a_line_break_are_not_truncated(
    fallback: bool, data: bytes
) -> None:
    assert _outcome(data, fallback)[0] == "accepted"


@PATHS
def test_a_file_cut_inside_a_utf8_character_is_truncated_not_badly_encoded(
    fallback: bool,
) -> None:
    data = f"{HEADER_LINE}\n{GOOD}\n101,S2,M".encode() + "ü".encode()[:1]
    code, line, message = _outcome(data, fallback)
    assert (code, line) == (ErrorCode.FILE_TRUNCATED, 3)
    assert "middle of a character" in message
    # a bad byte that is not at the end stays FILE_ENCODING
    bad = f"{HEADER_LINE}\n101,S2,M".encode() + b"\xfc" + b"ller,x\n"
    assert _outcome(bad, fallback)[0] == ErrorCode.FILE_ENCODING


def _roster(conn) -> list[dict]:
    existing = [existing_student(f"S{i:03d}") for i in range(20)]
    load(conn, district_doc(existing=existing, mode="full_roster", guard="off"))
    conn.commit()
    return [row(f"S{i:03d}", password="") for i in range(20)]


def test_a_truncated_roster_deactivates_nobody(conn) -> None:
    rows = _roster(conn)
    whole = csv_bytes(rows)
    cut = whole[: int(len(whole) * 0.96)]  # the writer stalled at 96%, mid-row
    assert not cut.endswith(b"\n")
    result = run(conn, cut, key="D1-20260114T020000000000Z")
    assert result.status == "rejected" and result.deactivated_missing == 0
    assert result.error_codes == {"FILE_TRUNCATED": 1}
    assert {s["status"] for s in students(conn).values()} == {"active"}
    record = db_uploads.get_upload(conn, "D1-20260114T020000000000Z")
    assert record.status == "rejected" and record.deactivated_missing == 0


def test_eams_process_rejects_a_truncated_file_with_exit_2(
    db_url: str, conn, tmp_path: Path
) -> None:
    _roster(conn)
    path = tmp_path / "students.csv"
    whole = csv_bytes([row(f"S{i:03d}", password="") for i in range(20)])
    last_row = whole.rstrip(b"\r\n").rindex(b"\r\n") + 2
    path.write_bytes(whole[: last_row + 7])  # the last row's first 7 bytes: "101,S01"
    done = subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", "process", "--district", "D1", str(path)],
        cwd=tmp_path,
        env={**os.environ, "EAMS_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "rejected" and summary["deactivated_missing"] == 0
    assert summary["error_codes"] == {"FILE_TRUNCATED": 1}
    with open(tmp_path / summary["error_file"], newline="", encoding="utf-8") as f:
        [line] = list(csv.DictReader(f))
    assert (line["Line Number"], line["Error Code"]) == ("21", "FILE_TRUNCATED")
    assert "cut short" in line["Message"]
    assert {s["status"] for s in students(conn).values()} == {"active"}


@pytest.mark.parametrize(
    "tail",
    [
        "101,S2,Do",
        '101,S2,"Do',
        '101,S2,"Do""',  # a doubled quote: still inside
        '101,S2,"Do""","Ja',
        '101,S2,"Doe"x,Jane,,5,j2,secret1,,,A',  # text after a closing quote: complete
        '101,S2,Doe,"Ja\nne",,5,j2,secret1,,,A',
        '101,S2,Doe,"Ja\nne',
        "   ",
        "",
    ],
)
@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_the_reference_reads_a_cut_file_as_the_engine_does(tail: str, end: str) -> None:
    data = (HEADER_LINE + end + GOOD + end + tail).encode()
    try:
        eams_reference._parse(data)
        expected: tuple = ("accepted",)
    except eams_reference._Rejected as err:
        expected = (err.code, err.line)
    for fallback in (False, True):
        got = _outcome(data, fallback)
        assert (got[:1] if got[0] == "accepted" else got[:2]) == expected
