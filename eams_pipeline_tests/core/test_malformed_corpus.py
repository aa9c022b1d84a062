"""Malformed files: whatever the bytes, the reader returns rows or a FileRejected
with a line, never an exception; no record is lost or merged silently.

The corpus is generated here, case by case; each case states its outcome: a rejection
(code, line) or the accepted rows' lines and the row errors' (line, code). Every accepted
case also checks rows = accepted + malformed and that `count_data_records` (the counts of
a rejected file) agrees with the reader.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eams_pipeline.core.reading as reading
from eams_pipeline.core.reading import FileRejected, count_data_records, read_upload
from eams_pipeline.core.template import HEADER
from eams_pipeline.core.validation import validate_rows

HEADER_LINE = ",".join(HEADER)


def good(n: int) -> str:
    return f"101,N-{n:04d},Doe,Jane,,5,nuser{n},secret1,,,A"


def lines(*rows: str, end: str = "\n") -> bytes:
    return (end.join(rows) + end).encode("utf-8")


@dataclass(frozen=True)
class Case:
    data: bytes
    rejected: tuple[str, int] | None = None  # (code, line)
    accepted: list[tuple[int, str]] = field(default_factory=list)  # (line, student id)
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line, code)


def _unterminated_quote_in_5000_rows() -> Case:
    rows = [good(i) for i in range(5000)]
    rows[1] = '101,N-X,"Smith,Jo,,5,nuserx,secret1,,,A'  # line 3: the quote never closes
    return Case(
        lines(HEADER_LINE, *rows), accepted=[(2, "N-0000")], malformed=[(3, "WRONG_FIELD_COUNT")]
    )


CORPUS: dict[str, Case] = {
    # Excel "CSV (Macintosh)": every line ends with a bare CR
    "bare-cr-line-ends": Case(
        lines(HEADER_LINE, good(1), "101,N-0002,too,few", good(3), end="\r"),
        accepted=[(2, "N-0001"), (4, "N-0003")],
        malformed=[(3, "WRONG_FIELD_COUNT")],
    ),
    "bare-cr-line-ends-with-a-quoted-lf": Case(
        lines(HEADER_LINE, '101,N-0001,Doe,"Ja\nne",,5,nuser1,secret1,,,A', good(2), end="\r"),
        accepted=[(2, "N-0001"), (4, "N-0002")],
    ),
    "header-with-a-stray-quote": Case(
        lines(HEADER_LINE.replace("Grade", 'Gr"ade'), good(1)), rejected=("HEADER_MISMATCH", 1)
    ),
    "header-opening-a-quote-that-never-closes": Case(
        lines(HEADER_LINE.replace("Grade", '"Grade'), good(1), good(2)),
        rejected=("HEADER_MISMATCH", 1),
    ),
    "header-with-a-cr-inside-a-name": Case(
        lines(HEADER_LINE.replace("Grade", "Gr\rade"), good(1)), rejected=("HEADER_MISMATCH", 1)
    ),
    "header-with-a-bare-cr-ending-then-lf-lines": Case(
        (HEADER_LINE + "\r" + good(1) + "\n" + good(2) + "\n").encode(),
        rejected=("HEADER_MISMATCH", 1),
    ),
    "stray-cr-in-a-10-field-row": Case(
        lines(HEADER_LINE, "101,N-0005,Smith\r,Jo,,5,nuser5,pw,,A", good(1)),
        accepted=[(3, "N-0001")],
        malformed=[(2, "WRONG_FIELD_COUNT")],
    ),
    "stray-cr-in-an-11-field-crlf-row": Case(
        lines(HEADER_LINE, "101,N-0005,Smi\rth,Jo,,5,nuser5,secret1,,,A", good(1), end="\r\n"),
        accepted=[(2, "N-0005"), (3, "N-0001")],
    ),
    "unterminated-quote-on-line-3-of-5000-rows": _unterminated_quote_in_5000_rows(),
    "unterminated-quote-on-line-3-of-3-rows": Case(
        lines(HEADER_LINE, good(0), '101,N-X,"Smith,Jo,,5,nuserx,secret1,,,A', good(2)),
        accepted=[(2, "N-0000")],
        malformed=[(3, "WRONG_FIELD_COUNT")],
    ),
    "header-of-50-mb-without-a-newline": Case(b"x" * (50 << 20), rejected=("HEADER_MISMATCH", 1)),
    "header-over-128-kib": Case(
        lines(HEADER_LINE + "," + "y" * (200 << 10), good(1)), rejected=("HEADER_MISMATCH", 1)
    ),
    "field-over-128-kib-in-a-malformed-row": Case(
        lines(HEADER_LINE, "101,N-0001," + "z" * (200 << 10), good(2)),
        accepted=[(3, "N-0002")],
        malformed=[(2, "WRONG_FIELD_COUNT")],
    ),
    "quoted-field-over-128-kib-in-a-malformed-row": Case(
        lines(HEADER_LINE, '101,N-0001,"' + "z\n" * (100 << 10) + '"', good(2)),
        accepted=[(3 + (100 << 10), "N-0002")],
        malformed=[(2, "WRONG_FIELD_COUNT")],
    ),
    "200-kb-field-in-a-file-that-falls-back": Case(
        lines(HEADER_LINE, good(1).replace("Doe", "D" * 200_000), 'x"y', good(3)),
        accepted=[(2, "N-0001"), (4, "N-0003")],
        malformed=[(3, "WRONG_FIELD_COUNT")],
    ),
    "stray-quotes-that-pair-up-across-lines": Case(
        lines(
            HEADER_LINE,
            '101,N-0001,O"Brien',
            "junk",
            '101,N-0009,X"Y,John,,5,nuser9,pw,,,A',
            good(2),
        ),
        accepted=[(4, "N-0009"), (5, "N-0002")],
        malformed=[(2, "WRONG_FIELD_COUNT"), (3, "WRONG_FIELD_COUNT")],
    ),
    "quote-after-spaces-is-literal": Case(
        lines(HEADER_LINE, '101,N-0001, "Doe, Jr",Jane,,5,nuser1,secret1,,,A', good(2)),
        accepted=[(3, "N-0002")],
        malformed=[(2, "WRONG_FIELD_COUNT")],
    ),
    "text-after-a-closing-quote": Case(
        lines(HEADER_LINE, '101,N-0001,"Doe"x,Jane,,5,nuser1,secret1,,,A', good(2)),
        accepted=[(2, "N-0001"), (3, "N-0002")],
    ),
    "a-lone-quote-line": Case(
        lines(HEADER_LINE, good(1), '"', good(2)),
        accepted=[(2, "N-0001")],
        malformed=[(3, "WRONG_FIELD_COUNT")],
    ),
    "crlf-file-ending-with-a-bare-cr": Case(
        (HEADER_LINE + "\r\n" + good(1) + "\r\n" + good(2) + "\r").encode(),
        accepted=[(2, "N-0001"), (3, "N-0002")],
    ),
}


def _outcome(data: bytes, *, force_fallback: bool = False) -> tuple:
    try:
        parsed = read_upload(data, force_fallback=force_fallback)
    except FileRejected as err:
        return ("rejected", err.code.value, err.line)
    assert parsed.total_rows == len(parsed.rows) + len(parsed.malformed)  # nothing lost
    assert count_data_records(data) == parsed.total_rows
    return (
        "accepted",
        parsed.rows[["line", "student_id"]].values.tolist(),
        parsed.malformed[["line", "code"]].values.tolist(),
    )


@pytest.mark.parametrize("fallback", [False, True], ids=["fast", "csv-module"])
@pytest.mark.parametrize("name", list(CORPUS))
def test_malformed_corpus(name: str, fallback: bool) -> None:
    case = CORPUS[name]
    got = _outcome(case.data, force_fallback=fallback)
    if case.rejected:
        assert got == ("rejected", *case.rejected)
    else:
        accepted = [list(a) for a in case.accepted]
        assert got == ("accepted", accepted, [list(m) for m in case.malformed])


def test_an_unterminated_quote_names_the_lines_it_swallows() -> None:
    parsed = read_upload(_unterminated_quote_in_5000_rows().data)
    assert parsed.total_rows == 2
    message = parsed.malformed["message"].iloc[0]
    assert "from line 3 to line 5001" in message and "quote" in message


def test_a_huge_malformed_field_is_not_repeated_in_the_error() -> None:
    data = lines(HEADER_LINE, '101,"' + "S" * (300 << 10) + '"', good(2))
    error = read_upload(data).malformed.iloc[0]
    assert len(error["student_id"]) < 200 and len(error["message"]) < 200


def test_the_header_message_is_capped_and_shows_invisible_characters() -> None:
    wide = ",".join(f"c{i}" for i in range(100_000))
    with pytest.raises(FileRejected) as info:
        read_upload(lines(wide, good(1)))
    assert len(info.value.message) < 1200
    # not column names: counted, never repeated (README, Security)
    assert "100000 values" in info.value.message and "c99" not in info.value.message
    bom_nbsp = HEADER_LINE.replace("Grade", "\ufeffGrade").replace("Student ID", "Student\xa0ID")
    with pytest.raises(FileRejected) as info:
        read_upload(lines(bom_nbsp, good(1)))
    assert info.value.code == "HEADER_MISMATCH"
    assert "<BOM>Grade" in info.value.message and "Student<NBSP>ID" in info.value.message


def _row(**values: str) -> str:
    base = dict(
        zip(
            (
                "school_code",
                "student_id",
                "last_name",
                "first_name",
                "middle_name",
                "grade",
                "username",
                "password",
                "email",
                "class_name",
                "status",
            ),
            good(1).split(","),
            strict=True,
        )
    )
    base.update(values)
    return ",".join(base.values())


@pytest.mark.parametrize(
    ("values", "column", "code"),
    [
        ({"last_name": "\u200b"}, "Last Name", "REQUIRED_FIELD_MISSING"),
        ({"first_name": "\u200b\u200d \ufeff"}, "First Name", "REQUIRED_FIELD_MISSING"),
        ({"school_code": "\u2060"}, "School Code", "REQUIRED_FIELD_MISSING"),
        ({"last_name": "Smith\u202eevil"}, "Last Name", "INVALID_CHARACTERS"),
        ({"first_name": "Jo\x1b[31mhn"}, "First Name", "INVALID_CHARACTERS"),
        ({"middle_name": "A\x07"}, "Middle Name", "INVALID_CHARACTERS"),
        ({"class_name": "Room\x7f4"}, "Class Name", "INVALID_CHARACTERS"),
        ({"school_code": "1\u20660\u20691"}, "School Code", "INVALID_CHARACTERS"),
        ({"last_name": '"Smi\nth"'}, "Last Name", "INVALID_CHARACTERS"),
        ({"student_id": "N\x1b1"}, "Student ID", "INVALID_STUDENT_ID"),
        ({"username": "user\u202e1"}, "Username", "INVALID_USERNAME"),
    ],
)
@pytest.mark.parametrize("fallback", [False, True], ids=["fast", "csv-module"])
def test_invisible_and_control_characters_are_row_errors(
    values: dict[str, str], column: str, code: str, fallback: bool
) -> None:
    parsed = read_upload(lines(HEADER_LINE, good(2), _row(**values)), force_fallback=fallback)
    errors = validate_rows(parsed.rows)
    assert errors[["line", "column", "code"]].values.tolist() == [[3, column, code]]
    # the message never carries the raw control or bidi character
    assert not any(c in errors["message"].iloc[0] for c in "\x1b\u202e\u2066\x07\x7f\n")


def test_zero_width_inside_a_name_is_kept() -> None:
    parsed = read_upload(lines(HEADER_LINE, _row(last_name="Ka\u200cdo")))
    assert parsed.rows["last_name"].tolist() == ["Ka\u200cdo"]
    assert validate_rows(parsed.rows).empty


# --- the fast path and the csv module agree on every record -------------------------------

_ALPHABET = st.sampled_from(['"', '"', ",", ",", ",", "\r", "\n", "\n", "a", "b", " ", "\r\n"])


def _records(data: bytes, force_fallback: bool) -> tuple:
    try:
        parsed = read_upload(data, force_fallback=force_fallback)
    except FileRejected as err:
        return ("rejected", err.code.value, err.line)
    return (
        parsed.total_rows,
        parsed.rows.astype(object).where(parsed.rows.notna(), None).values.tolist(),
        parsed.malformed[["row", "line", "student_id", "code", "message"]].values.tolist(),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.lists(_ALPHABET, max_size=120).map("".join),
    valid_rows=st.lists(st.integers(0, 3), max_size=4),
    line_end=st.sampled_from(["\n", "\r\n", "\r"]),
    step=st.sampled_from([64, 128, 1 << 22]),
)
def test_fast_path_and_csv_module_agree_on_every_record(
    body: str, valid_rows: list[int], line_end: str, step: int
) -> None:
    # random bytes between valid rows, some with ten commas so they may look well-formed
    pieces = [HEADER_LINE, *(good(i) for i in valid_rows), body, "a" + ",b" * 10, body[::-1]]
    data = line_end.join(pieces).encode("utf-8")
    # the scan classifies the bytes in steps (4 MiB): small ones cut these files too
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reading, "_MASK_STEP", step)
        fast = _records(data, force_fallback=False)
        assert fast == _records(data, force_fallback=True)
        if fast[0] != "rejected":
            assert count_data_records(data) == fast[0]


# --- end to end: `eams process` as a real process, memory and time capped -----------------


def _capped() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _eams_process(path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", "process", "--district", "D1", str(path)],
        cwd=path.parent,
        env={**os.environ, "EAMS_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=_capped,
    )


@pytest.mark.parametrize(
    ("name", "exit_code", "rows", "error_lines"),
    [
        ("bare-cr-line-ends", 0, 3, [(3, "WRONG_FIELD_COUNT")]),
        ("header-with-a-stray-quote", 2, 1, [(1, "HEADER_MISMATCH")]),
        ("header-with-a-cr-inside-a-name", 2, 1, [(1, "HEADER_MISMATCH")]),
        ("stray-cr-in-a-10-field-row", 0, 2, [(2, "WRONG_FIELD_COUNT")]),
        ("unterminated-quote-on-line-3-of-5000-rows", 0, 2, [(3, "WRONG_FIELD_COUNT")]),
        ("header-of-50-mb-without-a-newline", 2, 0, [(1, "HEADER_MISMATCH")]),
        ("field-over-128-kib-in-a-malformed-row", 0, 2, [(2, "WRONG_FIELD_COUNT")]),
        (
            "stray-quotes-that-pair-up-across-lines",
            0,
            4,
            [(2, "WRONG_FIELD_COUNT"), (3, "WRONG_FIELD_COUNT"), (4, "INVALID_PASSWORD")],
        ),
        (
            "200-kb-field-in-a-file-that-falls-back",
            0,
            3,
            [(2, "FIELD_TOO_LONG"), (3, "WRONG_FIELD_COUNT")],
        ),
        ("control-characters", 0, 2, [(2, "INVALID_CHARACTERS"), (3, "REQUIRED_FIELD_MISSING")]),
    ],
)
def test_eams_process_rejects_or_reports_rows_never_fails(
    name: str,
    exit_code: int,
    rows: int,
    error_lines: list[tuple[int, str]],
    db_url: str,
    tmp_path: Path,
) -> None:
    import yaml

    from eams_pipeline_tests.builders import district_doc

    setup = tmp_path / "setup.yaml"
    setup.write_text(yaml.safe_dump({"districts": [district_doc()]}))
    loaded = subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", "setup", "load", str(setup)],
        env={**os.environ, "EAMS_DATABASE_URL": db_url},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert loaded.returncode == 0
    if name == "control-characters":
        data = lines(
            HEADER_LINE,
            _row(last_name="Smith\u202e\x1b[2J"),
            _row(student_id="N-2", last_name="\u200b", username="user2"),
        )
    else:
        data = CORPUS[name].data
    upload = tmp_path / "students.csv"
    upload.write_bytes(data)
    done = _eams_process(upload, db_url)
    assert done.returncode == exit_code, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["rows"] == rows
    errors = list(csv.reader(io.StringIO((tmp_path / summary["error_file"]).read_text("utf-8"))))
    assert [(int(e[0]), e[3]) for e in errors[1:]] == error_lines
    assert all(len(e[4]) < 1500 for e in errors[1:])
    assert not any(c in "".join(e[4] for e in errors[1:]) for c in "\x1b\u202e")
