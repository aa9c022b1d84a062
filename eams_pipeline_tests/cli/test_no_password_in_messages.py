"""No message quotes a password: a sweep of every error code through the real engine.

Each scenario plants a distinctive password where a district's file really carries one
(its Password column, a neighbour column it was swapped into, a first line that is a
student row, a row broken by a stray line break or quote...) and produces its error code
through `eams process` (the CLI's own code, in this process) against a real database. The
password must appear nowhere: the CLI's output, the error file, the `upload_errors` and
`uploads` rows, `eams uploads show` (text and JSON), and the district's outcome email
built as the Dagster job builds it (core.notifications through services.notify, from the
recorded outcome).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from eams_pipeline import cli
from eams_pipeline.core.errors import ErrorCode
from eams_pipeline.core.template import COLUMNS, HEADER
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.districts import get_district
from eams_pipeline.db.export import order_licenses
from eams_pipeline.services.notify import district_outcome_email
from eams_pipeline_tests.builders import district_doc, existing_student, load, row, run, students

PW = "Zq8!vLp2#mW"  # breaks the Username and Email rules
PW_PLAIN = "Welcome2026pw"  # a valid username too (a default password many students share)
PW_LETTERS = "Bluemoonriver"  # letters only: looks like a word
HEADER_LINE = ",".join(HEADER)


def line(**values: str) -> str:
    """A row as the SIS writes it (no quoting), for a new student N1 with password PW."""
    r = row("N1", password=PW)
    r.update(values)
    return ",".join(r[c] for c in COLUMNS)


def text(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Scenario:
    data: bytes
    codes: frozenset[str]  # among the upload's error codes
    secrets: tuple[str, ...] = (PW,)
    district: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def _scenario(data: bytes, *codes: str, **kwargs: Any) -> Scenario:
    return Scenario(data, frozenset(codes), **kwargs)


SCENARIOS: dict[str, Scenario] = {
    # --- file-level ---
    "encoding-byte-beside-the-password": _scenario(
        text(HEADER_LINE, line()).replace(b"LastN1", b"Caf\xe9"), "FILE_ENCODING"
    ),
    "empty-file": _scenario(text(HEADER_LINE, "", ""), "FILE_EMPTY"),
    "too-large": _scenario(
        text(HEADER_LINE, line(), line(student_id="N2")),
        "FILE_TOO_LARGE",
        env={"EAMS_MAX_UPLOAD_BYTES": "64"},
    ),
    "header-left-out": _scenario(
        text(line(), line(student_id="N2", username="userN2")), "HEADER_MISMATCH"
    ),
    "header-left-out-letters-only-password": _scenario(
        text(line(password=PW_LETTERS)), "HEADER_MISMATCH", secrets=(PW_LETTERS,)
    ),
    "header-left-out-first-row-short": _scenario(
        text(line().replace(",A", ""), line(student_id="N2")), "HEADER_MISMATCH"
    ),
    "header-left-out-csv-module-path": _scenario(
        text(line(last_name='O"Brien'), line(student_id="N2")), "HEADER_MISMATCH"
    ),
    "header-with-a-password-as-8th-name": _scenario(
        text(HEADER_LINE.replace("Password", PW), line()), "HEADER_MISMATCH"
    ),
    "header-with-a-word-password-as-8th-name": _scenario(
        text(HEADER_LINE.replace("Password", PW_LETTERS), line()),
        "HEADER_MISMATCH",
        secrets=(PW_LETTERS,),
    ),
    "header-and-first-row-on-one-line": _scenario(
        text(HEADER_LINE + line(password=PW_LETTERS), line(student_id="N2")),
        "HEADER_MISMATCH",
        secrets=(PW_LETTERS, PW),
    ),
    "header-cut-after-username-then-a-row": _scenario(
        text(",".join(HEADER[:7]) + "," + PW, line()), "HEADER_MISMATCH"
    ),
    "first-line-over-1-mb": _scenario(
        text(line(class_name="x" * (1 << 20)), line(student_id="N2")), "HEADER_MISMATCH"
    ),
    "cut-right-after-the-password": _scenario(
        text(HEADER_LINE, line()) + line(student_id="N2").rsplit(",", 3)[0].encode(),
        "FILE_TRUNCATED",
    ),
    "cut-inside-a-quoted-password": _scenario(
        text(HEADER_LINE, line())
        + line(student_id="N2", password='"' + PW).rsplit(",", 3)[0].encode(),
        "FILE_TRUNCATED",
    ),
    # --- row-level ---
    "extra-comma-in-a-name": _scenario(
        text(HEADER_LINE, line(last_name="Smith, Jr")), "WRONG_FIELD_COUNT"
    ),
    "row-broken-in-the-username": _scenario(
        text(HEADER_LINE, line(username="us\ner1")), "WRONG_FIELD_COUNT"
    ),
    "row-broken-twice": _scenario(
        text(HEADER_LINE, line(username="us\ner1", email="em\nail@school.org")),
        "WRONG_FIELD_COUNT",
    ),
    "row-broken-then-commas-in-the-class": _scenario(
        text(HEADER_LINE, line(username="us\ner1", class_name="a,b,5")), "WRONG_FIELD_COUNT"
    ),
    "unterminated-quote-before-the-password": _scenario(
        text(HEADER_LINE, line(last_name='"Smith'), line(student_id="N2")), "WRONG_FIELD_COUNT"
    ),
    "comma-inside-the-password": _scenario(
        text(HEADER_LINE, line(password="Zq8!v,Lp2#mW")),
        "WRONG_FIELD_COUNT",
        secrets=("Zq8!v,Lp2#mW", "Zq8!v", "Lp2#mW"),
    ),
    "required-field-missing": _scenario(
        text(HEADER_LINE, line(last_name="")), "REQUIRED_FIELD_MISSING"
    ),
    "password-too-long": _scenario(
        text(HEADER_LINE, line(password=PW * 7)), "FIELD_TOO_LONG", secrets=(PW * 7, PW)
    ),
    "password-swapped-into-a-long-username": _scenario(
        text(HEADER_LINE, line(username=PW + "x" * 60, password="userN1")),
        "FIELD_TOO_LONG",
    ),
    "invalid-student-id": _scenario(
        text(HEADER_LINE, line(student_id="N 1")), "INVALID_STUDENT_ID"
    ),
    "invalid-grade": _scenario(text(HEADER_LINE, line(grade="13")), "INVALID_GRADE"),
    "password-and-username-swapped": _scenario(
        text(HEADER_LINE, line(username=PW, password="userN1")), "INVALID_USERNAME"
    ),
    "password-too-short": _scenario(
        text(HEADER_LINE, line(password="Q#7z!")), "INVALID_PASSWORD", secrets=("Q#7z!",)
    ),
    "password-and-email-swapped": _scenario(
        text(HEADER_LINE, line(email=PW, password="n1@school.org")), "INVALID_EMAIL"
    ),
    "invalid-status": _scenario(text(HEADER_LINE, line(status="Q")), "INVALID_STATUS"),
    "control-character-in-a-name": _scenario(
        text(HEADER_LINE, line(last_name="Sm\x1bith")), "INVALID_CHARACTERS"
    ),
    "password-in-the-email-column-none-in-its-own": _scenario(
        text(HEADER_LINE, line(email=PW, password="")), "PASSWORD_REQUIRED", "INVALID_EMAIL"
    ),
    "unknown-school": _scenario(text(HEADER_LINE, line(school_code="999")), "SCHOOL_NOT_FOUND"),
    "grade-not-participating": _scenario(
        text(HEADER_LINE, line(grade="5")),
        "GRADE_NOT_PARTICIPATING",
        district={"grades": ["K", "1", "2", "3"]},
    ),
    "duplicate-student-id": _scenario(
        text(HEADER_LINE, line(), line(username="userN1b")), "DUPLICATE_STUDENT_ID"
    ),
    "same-default-password-swapped-into-usernames": _scenario(
        text(
            HEADER_LINE,
            line(username=PW_PLAIN, password="userN1"),
            line(student_id="N2", username=PW_PLAIN, password="userN2"),
        ),
        "DUPLICATE_USERNAME",
        secrets=(PW_PLAIN,),
    ),
    "swapped-password-is-a-taken-username": _scenario(
        text(HEADER_LINE, line(username=PW_PLAIN, password="userN1")),
        "USERNAME_TAKEN",
        secrets=(PW_PLAIN,),
        district={"existing": [existing_student("E1", username=PW_PLAIN)]},
    ),
    "student-exists": _scenario(
        text(HEADER_LINE, line(student_id="E1", status="X")),
        "STUDENT_EXISTS",
        district={"existing": [existing_student("E1")]},
    ),
    "student-not-found": _scenario(text(HEADER_LINE, line(status="D")), "STUDENT_NOT_FOUND"),
    "no-license-available": _scenario(
        text(HEADER_LINE, line()), "NO_LICENSE_AVAILABLE", district={"licenses": 0}
    ),
}


def test_the_sweep_covers_every_error_code() -> None:
    covered = set().union(*(s.codes for s in SCENARIOS.values()))
    assert covered == {c.value for c in ErrorCode}


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def _outputs(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], scenario: Scenario
) -> tuple[set[str], dict[str, str]]:
    """Run the scenario's file through `eams process`; everything it left, by sink."""
    upload = tmp_path / "students.csv"
    upload.write_bytes(scenario.data)
    error_file = tmp_path / "errors.csv"
    code, process_output = _main(
        capsys, "process", "--district", "D1", str(upload), "--errors-out", str(error_file)
    )
    assert code in (0, 2), process_output
    summary = json.loads(process_output.strip().splitlines()[-1])
    sinks = {"eams process": process_output}
    sinks["error file"] = error_file.read_text(encoding="utf-8") if error_file.exists() else ""
    with psycopg.connect(db_url) as conn:
        key = conn.execute(
            "SELECT upload_key FROM uploads WHERE upload_id = %s", (summary["upload_id"],)
        ).fetchone()[0]
        sinks["upload_errors"] = repr(
            conn.execute(
                "SELECT * FROM upload_errors WHERE upload_id = %s", (summary["upload_id"],)
            ).fetchall()
        )
        sinks["uploads"] = repr(
            conn.execute("SELECT * FROM uploads WHERE upload_key = %s", (key,)).fetchall()
        )
        record = db_uploads.get_upload(conn, key)
        assert record is not None
        result = db_uploads.recorded_result(conn, record, "D1")
        district = get_district(conn, "D1")
        assert district is not None
        message, _ = district_outcome_email(
            district,
            result,
            upload_key=key,
            error_file=record.error_file,
            sender="e@x.org",
            licenses=order_licenses(conn, "D1"),
        )
    sinks["email"] = f"{message['Subject']}\n{message.get_content()}"
    sinks["uploads show"] = _main(capsys, "uploads", "show", key)[1]
    sinks["uploads show --json"] = _main(capsys, "uploads", "show", key, "--json")[1]
    return set(summary["error_codes"]), sinks


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_sink_quotes_the_planted_password(
    name: str,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = SCENARIOS[name]
    for key, value in scenario.env.items():
        monkeypatch.setenv(key, value)
    options = dict(scenario.district)
    grades = options.pop("grades", None)
    doc = district_doc(**options)
    if grades is not None:
        doc["grades"] = grades
    with psycopg.connect(db_url) as conn:
        load(conn, doc)
    codes, sinks = _outputs(db_url, tmp_path, capsys, scenario)
    assert scenario.codes <= codes, (codes, sinks["error file"])
    for sink, content in sinks.items():
        for secret in scenario.secrets:
            assert secret not in content, f"{sink} quotes {secret!r}:\n{content[:3000]}"


# --- what the messages say instead ------------------------------------------------------


def _rejection(data: bytes) -> str:
    from eams_pipeline.core.reading import FileRejected, read_upload

    with pytest.raises(FileRejected) as info:
        read_upload(data)
    assert info.value.code == ErrorCode.HEADER_MISMATCH and info.value.line == 1
    return info.value.message


@pytest.mark.parametrize("fallback", [False, True], ids=["fast", "csv-module"])
def test_a_first_line_that_is_a_student_row_is_described_not_quoted(fallback: bool) -> None:
    from eams_pipeline.core.reading import FileRejected, read_upload

    with pytest.raises(FileRejected) as info:
        read_upload(text(line(), line(student_id="N2")), force_fallback=fallback)
    message = info.value.message
    assert message.startswith(
        "The first line is not the template header: it looks like a student row"
    )
    assert f"must start with the template header: {HEADER_LINE}" in message
    assert "N1" not in message and "LastN1" not in message  # no student data at all


def test_a_header_shows_its_column_names_and_hides_the_rest() -> None:
    message = _rejection(text(HEADER_LINE.replace("Password", PW_LETTERS), line()))
    found = message.split("Found (11 names): ")[1]
    assert found.startswith("School Code,Student ID,Last Name,First Name,Middle Name,Grade,")
    assert "Username,[not shown],Email,Class Name,Status" in found
    assert "Missing or misspelt: Password" in message
    # an extra column is named (a plain header); a misspelt one too
    message = _rejection(text(HEADER_LINE.replace("Email", "E-mail") + ",Homeroom", line()))
    assert "E-mail,Class Name,Status,Homeroom" in message
    assert "Missing or misspelt: Email" in message
    message = _rejection(text(HEADER_LINE.replace("Student ID", "Student Id"), line()))
    assert "Student Id" in message and "letter case included" in message


def test_a_row_split_by_a_line_break_keeps_only_its_first_student_id() -> None:
    from eams_pipeline.core.reading import read_upload

    data = text(HEADER_LINE, line(username="us\ner1"), line(student_id="N2", last_name="A, B"))
    errors = read_upload(data).malformed
    assert errors["line"].tolist() == [2, 3, 4]
    # line 3 is the rest of line 2's row: its second field is the password. Line 4 could
    # be more of it as far as the reader knows (after a short record): no Student ID either
    assert errors["student_id"].tolist() == ["N1", "", ""]
    assert "The row ending on line 2 is short: did a line break" in errors["message"].iloc[1]
    assert "line break" not in errors["message"].iloc[0]


def test_column_errors_say_what_is_wrong_without_the_value() -> None:
    from eams_pipeline.core.reading import read_upload
    from eams_pipeline.core.validation import validate_rows

    data = text(
        HEADER_LINE,
        line(email=PW, username="us er", last_name="Sm\tith", grade="13", status="Active"),
    )
    errors = validate_rows(read_upload(data).rows)
    messages = dict(zip(errors["code"], errors["message"], strict=True))
    assert messages["INVALID_EMAIL"] == "Email is not a valid email address. It has no @."
    assert messages["INVALID_USERNAME"].endswith("It contains a space.")
    assert "us er" not in messages["INVALID_USERNAME"]
    assert messages["INVALID_CHARACTERS"].endswith("Found: <TAB> at character 3.")
    assert messages["INVALID_GRADE"].endswith("Found: 13")  # short codes are quoted
    assert messages["INVALID_STATUS"].endswith("Found: Active")


def test_a_malformed_row_still_names_its_student_for_the_full_roster(conn) -> None:
    """The Student ID column hides a record's second field after a short record, but the
    record still names that student: the full roster does not deactivate it."""
    load(
        conn,
        district_doc(existing=[existing_student(f"S{i}") for i in range(1, 5)], mode="full_roster"),
    )

    def of(sid: str) -> str:  # the stored student's row, unchanged
        return line(student_id=sid, username=f"user{sid}", last_name=f"Last{sid}", password="")

    short = [of(sid).rsplit(",", 1)[0] for sid in ("S2", "S3")]  # Status left out
    data = text(HEADER_LINE, of("S1"), *short, of("S4"))
    result = run(conn, data)
    assert result.error_codes == {"WRONG_FIELD_COUNT": 2}
    assert result.errors["student_id"].tolist() == ["S2", ""]  # S3's row follows a short one
    assert result.deactivated_missing == 0
    assert {v["status"] for v in students(conn).values()} == {"active"}


def test_the_student_id_column_is_capped_and_names_control_characters(conn) -> None:
    load(conn, district_doc(existing=[existing_student("E1")]))
    odd = "N\x1b[31m" + "x" * 1000
    data = text(HEADER_LINE, line(student_id=odd), line(student_id=odd, username="u2"))
    result = run(conn, data)
    assert {"FIELD_TOO_LONG", "INVALID_STUDENT_ID", "DUPLICATE_STUDENT_ID"} <= set(
        result.error_codes
    )
    shown = set(result.errors["student_id"])
    assert shown == {"N<U+001B>[31m" + "x" * 58 + "… (the first 64 of 1006 characters)"}
    assert all("\x1b" not in m and len(m) < 300 for m in result.errors["message"])


@pytest.mark.parametrize("fallback", [False, True], ids=["fast", "csv-module"])
def test_a_first_line_over_1_mb_with_a_bare_cr_is_rejected_not_raised(
    fallback: bool,
) -> None:
    from eams_pipeline.core.reading import FileRejected, read_upload

    # a CR that ends no line, in the first names of a line of 2 MB
    data = b"School Code,Last\rName," + b"y" * (1 << 21) + b"\n" + line().encode()
    with pytest.raises(FileRejected) as info:
        read_upload(data, force_fallback=fallback)
    assert info.value.code == ErrorCode.HEADER_MISMATCH
    assert "bytes long" in info.value.message
