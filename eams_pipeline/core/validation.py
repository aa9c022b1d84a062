"""Column rules of SPEC §3 as a pandera schema, run lazily so every broken rule is reported.

A check's name is the error code it raises; a missing required value is
REQUIRED_FIELD_MISSING and no other rule runs on that cell. Rules that need the
database (school codes, existing students, usernames taken, licenses) belong to the plan.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from eams_pipeline.core.errors import ErrorCode, empty_errors, error_frame, visible
from eams_pipeline.core.template import COLUMNS, DISPLAY_NAME

MAX_LENGTH = {
    "school_code": 64,
    "student_id": 32,
    "last_name": 60,
    "first_name": 60,
    "middle_name": 60,
    "username": 64,
    "password": 64,
    "email": 254,
    "class_name": 100,
}
REQUIRED = ("school_code", "student_id", "last_name", "first_name", "grade", "username", "status")
GRADES = ("K", *(str(g) for g in range(1, 13)))
STATUSES = ("A", "D", "X", "I")

# control characters (C0 with TAB, CR and LF; DEL; C1) and bidi controls (U+202E reverses
# what a terminal or a spreadsheet shows): never in a name; other columns' patterns are ASCII
CONTROL_CHARACTERS = "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
STUDENT_ID_PATTERN = r"^[A-Za-z0-9._-]+$"
USERNAME_PATTERN = r"^[A-Za-z0-9._@-]{3,}$"
GRADE_PATTERN = r"^(?:[Kk]|0?[1-9]|1[0-2])$"
# IGNORE (the seed's own label for I), any case, is read as I
STATUS_PATTERN = r"^(?:[AaDdXxIi]|[Ii][Gg][Nn][Oo][Rr][Ee])$"
# a pragmatic RFC 5322 subset: dot-atom local part, dotted domain with a letter TLD
EMAIL_PATTERN = (
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)

# what the district reads for each code; {column} is the template column name
MESSAGES: dict[str, str] = {
    ErrorCode.REQUIRED_FIELD_MISSING: "{column} is required.",
    ErrorCode.FIELD_TOO_LONG: "{column} is longer than {max} characters.",
    ErrorCode.INVALID_STUDENT_ID: "Student ID may only contain A-Z a-z 0-9 . _ and -.",
    ErrorCode.INVALID_GRADE: "Grade must be K or 1 to 12.",
    ErrorCode.INVALID_USERNAME: "Username must be 3 to 64 characters of A-Z a-z 0-9 . _ - and @.",
    ErrorCode.INVALID_PASSWORD: "Password must be 6 to 64 characters.",
    ErrorCode.INVALID_EMAIL: "Email is not a valid email address.",
    ErrorCode.INVALID_STATUS: "Status must be A, D, X or I (IGNORE is read as I).",
    ErrorCode.INVALID_CHARACTERS: (
        "{column} contains control or text-direction characters (shown as <...>)."
    ),
}
# columns whose value is never repeated in a message
SECRET_COLUMNS = frozenset({"password"})


def _too_long(column: str) -> pa.Check:
    limit = MAX_LENGTH[column]
    return pa.Check(lambda s: s.str.len() <= limit, name=ErrorCode.FIELD_TOO_LONG.value)


def _matches(pattern: str, code: ErrorCode) -> pa.Check:
    return pa.Check(lambda s: s.str.fullmatch(pattern), name=code.value)


def _no_control_characters() -> pa.Check:
    return pa.Check(
        lambda s: ~s.str.contains(CONTROL_CHARACTERS, regex=True),
        name=ErrorCode.INVALID_CHARACTERS.value,
    )


def _min_length(length: int, code: ErrorCode) -> pa.Check:
    return pa.Check(lambda s: s.str.len() >= length, name=code.value)


_RULES: dict[str, list[pa.Check]] = {
    "school_code": [_too_long("school_code"), _no_control_characters()],
    "student_id": [
        _too_long("student_id"),
        _matches(STUDENT_ID_PATTERN, ErrorCode.INVALID_STUDENT_ID),
    ],
    "last_name": [_too_long("last_name"), _no_control_characters()],
    "first_name": [_too_long("first_name"), _no_control_characters()],
    "middle_name": [_too_long("middle_name"), _no_control_characters()],
    "grade": [_matches(GRADE_PATTERN, ErrorCode.INVALID_GRADE)],
    "username": [_too_long("username"), _matches(USERNAME_PATTERN, ErrorCode.INVALID_USERNAME)],
    "password": [_too_long("password"), _min_length(6, ErrorCode.INVALID_PASSWORD)],
    "email": [_too_long("email"), _matches(EMAIL_PATTERN, ErrorCode.INVALID_EMAIL)],
    "class_name": [_too_long("class_name"), _no_control_characters()],
    "status": [_matches(STATUS_PATTERN, ErrorCode.INVALID_STATUS)],
}

STUDENTS_SCHEMA = pa.DataFrameSchema(
    {
        column: pa.Column(nullable=column not in REQUIRED, checks=_RULES[column], required=True)
        for column in COLUMNS
    },
    strict=False,
    name="students.csv",
)


def validate_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Every broken column rule of the well-formed rows, as an error frame (file order)."""
    try:
        STUDENTS_SCHEMA.validate(rows, lazy=True)
    except SchemaErrors as exc:
        return _to_errors(exc.failure_cases, rows)
    return empty_errors()


def _to_errors(failures: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    failures = failures[failures["index"].notna() & failures["column"].isin(COLUMNS)]
    if failures.empty:
        return empty_errors()
    index = failures["index"].astype("int64").to_numpy()
    column = failures["column"].astype(str)
    code = (
        failures["check"]
        .astype(str)
        .where(failures["check"] != "not_nullable", ErrorCode.REQUIRED_FIELD_MISSING.value)
    )
    display = column.map(DISPLAY_NAME)
    template = code.map(MESSAGES)
    message = pd.Series(
        [
            t.format(column=d, max=MAX_LENGTH.get(c, ""))
            for t, d, c in zip(template, display, column, strict=True)
        ],
        index=failures.index,
    )
    value = failures["failure_case"].astype("str")
    shown = (~column.isin(SECRET_COLUMNS)) & failures["failure_case"].notna()
    shown &= code != ErrorCode.REQUIRED_FIELD_MISSING.value
    message = message.where(
        ~shown, message + " Found: " + value.map(lambda v: visible(str(v), 100))
    )
    located = rows.loc[index]
    errors = error_frame(
        index,
        located["line"].to_numpy(),
        located["student_id"].fillna("").to_numpy(),
        display.to_numpy(),
        code.to_numpy(),
        message.to_numpy(),
    )
    # file order, then template column order within a row
    errors["_col"] = errors["column"].map({DISPLAY_NAME[c]: i for i, c in enumerate(COLUMNS)})
    errors = errors.sort_values(["row", "_col"], kind="stable").drop(columns="_col")
    return errors.reset_index(drop=True)


def normalise(rows: pd.DataFrame) -> pd.DataFrame:
    """Stored forms: Grade `K` or `1`..`12` without a leading zero, Status upper-case
    (`IGNORE` read as `I`)."""
    out = rows.copy()
    out["grade"] = out["grade"].str.upper().str.replace(r"^0(?=[1-9]$)", "", regex=True)
    out["status"] = out["status"].str.upper().replace({"IGNORE": "I"})
    return out
