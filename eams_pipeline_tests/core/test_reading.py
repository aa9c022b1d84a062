"""File-level checks and physical line numbers (SPEC §2)."""

from __future__ import annotations

import pandas as pd
import pytest

from eams_pipeline.core.errors import ErrorCode
from eams_pipeline.core.reading import FileRejected, count_data_records, read_upload
from eams_pipeline.core.template import HEADER
from eams_pipeline_tests.spec import require_spec_file

HEADER_LINE = ",".join(HEADER)
GOOD = "101,S1,Doe,Jane,,5,jdoe,secret1,,,A"


def _read(text: str, **kwargs) -> object:
    return read_upload(text.encode("utf-8"), **kwargs)


def _rejected(data: bytes) -> FileRejected:
    with pytest.raises(FileRejected) as info:
        read_upload(data)
    return info.value


@pytest.mark.parametrize("fallback", [False, True], ids=["arrow", "csv-module"])
def test_lines_are_physical_with_multiline_quotes_blank_lines_and_crlf(fallback: bool) -> None:
    text = (
        "\r\n".join(
            [
                HEADER_LINE,  # 1
                '101,S1,Doe,"Jane\r\nMarie",,5,jdoe,secret1,,,A',  # 2-3
                "",  # 4 (blank, not a row)
                "101,S2,too,few",  # 5
                '101,S3,"Roe, ""Jr""",Al,,K,aroe,secret1,,"a\nb\nc",X',  # 6-8
                GOOD.replace("S1", "S4"),  # 9
            ]
        )
        + "\r\n"
    )
    parsed = _read(text, force_fallback=fallback)
    assert parsed.total_rows == 4
    assert parsed.rows["line"].tolist() == [2, 6, 9]
    assert parsed.rows["row"].tolist() == [0, 2, 3]
    assert parsed.rows.loc[2, "last_name"] == 'Roe, "Jr"'
    assert parsed.rows.loc[0, "first_name"] == "Jane\r\nMarie"
    assert parsed.malformed[["line", "student_id", "code"]].values.tolist() == [
        [5, "S2", "WRONG_FIELD_COUNT"]
    ]


def test_values_are_trimmed_and_empty_is_absent_and_leading_zeros_kept() -> None:
    parsed = _read(
        f"  {HEADER_LINE.replace(',', ' , ')}  \n 007 , 0042 ,Doe,Jane,   ,05,jd0,secret1,,,a\n"
    )
    r = parsed.rows.iloc[0]
    assert (r["school_code"], r["student_id"], r["grade"]) == ("007", "0042", "05")
    assert pd.isna(r["middle_name"])  # empty after trimming = absent


def test_utf8_bom_is_ignored() -> None:
    parsed = read_upload(b"\xef\xbb\xbf" + f"{HEADER_LINE}\n{GOOD}\n".encode())
    assert parsed.rows["student_id"].tolist() == ["S1"]


def test_invalid_utf8_names_the_line_of_the_first_bad_byte() -> None:
    data = f"{HEADER_LINE}\n{GOOD}\n".encode() + "101,S2,M\xfcller".encode("latin-1") + b",x\n"
    err = _rejected(data)
    assert err.code == ErrorCode.FILE_ENCODING
    assert err.line == 3
    assert "line 3" in err.message and "0xFC" in err.message


@pytest.mark.parametrize(
    "data", [b"", b"   \r\n\n", f"{HEADER_LINE}\n".encode(), f"{HEADER_LINE}\r\n\r\n\r\n".encode()]
)
def test_empty_file_or_header_only_is_file_empty(data: bytes) -> None:
    assert _rejected(data).code == ErrorCode.FILE_EMPTY


@pytest.mark.parametrize(
    "header",
    [
        HEADER_LINE.replace("Grade", "grade"),  # case must match
        HEADER_LINE.replace("Grade,Username", "Username,Grade"),  # order
        HEADER_LINE + ",Extra",  # count
        HEADER_LINE.replace(",Class Name", ""),  # missing
    ],
)
def test_header_must_equal_the_template(header: str) -> None:
    err = _rejected(f"{header}\n{GOOD}\n".encode())
    assert err.code == ErrorCode.HEADER_MISMATCH
    assert err.line == 1
    assert HEADER_LINE in err.message  # the expected header
    assert header.strip() in err.message.replace(", ", ",")  # the found header


def test_header_names_compare_after_trimming() -> None:
    spaced = ",".join(f"  {h} " for h in HEADER)
    assert _read(f"{spaced}\n{GOOD}\n").total_rows == 1


def test_wrong_field_count_is_a_row_error_and_other_rows_count() -> None:
    parsed = _read(f"{HEADER_LINE}\n{GOOD},extra\n{GOOD.replace('S1', 'S2')}\n101\n")
    assert parsed.total_rows == 3
    assert parsed.rows["student_id"].tolist() == ["S2"]
    assert parsed.malformed["line"].tolist() == [2, 4]
    assert "12 fields" in parsed.malformed["message"].iloc[0]


def test_stray_quote_in_an_unquoted_field_is_kept_literally_and_lines_stay_right() -> None:
    # the quote-parity scan disagrees with the parser here, so the csv-module path decides
    text = f'{HEADER_LINE}\n101,S1,Do"e,Jane,,5,jdoe,secret1,,,A\n{GOOD.replace("S1", "S2")}\n'
    parsed = _read(text)
    assert parsed.total_rows == 2
    assert parsed.rows[["line", "student_id", "last_name"]].values.tolist() == [
        [2, "S1", 'Do"e'],
        [3, "S2", "Doe"],
    ]
    assert parsed.malformed.empty


def test_count_data_records_for_rejected_files() -> None:
    assert count_data_records(f"{HEADER_LINE}\n{GOOD}\n\n{GOOD}\n".encode()) == 2
    assert count_data_records(b"") == 0


def test_a_bare_cr_inside_quotes_is_kept_in_the_value() -> None:
    # no LF inside quotes, so the fast parser is told there are none; the CR makes it split
    # the record, the cross-check sees it, and the csv module reads the file instead
    text = f'{HEADER_LINE}\n101,S1,Doe,"Ja\rne",,5,jdoe,secret1,,,A\n{GOOD.replace("S1", "S2")}\n'
    parsed = _read(text)
    assert parsed.total_rows == 2
    assert parsed.rows["student_id"].tolist() == ["S1", "S2"]
    assert parsed.rows.loc[0, "first_name"] == "Ja\rne"
    assert parsed.malformed.empty


def test_the_compiled_header_is_the_contracts_template() -> None:
    template = require_spec_file("students-template.csv")
    first_line = template.read_text(encoding="utf-8-sig").splitlines()[0]
    assert tuple(first_line.split(",")) == HEADER
