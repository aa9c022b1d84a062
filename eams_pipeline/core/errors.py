"""Error codes of SPEC §5 and the shape of an error record."""

from __future__ import annotations

import re
from enum import StrEnum

import pandas as pd


class ErrorCode(StrEnum):
    FILE_ENCODING = "FILE_ENCODING"
    FILE_EMPTY = "FILE_EMPTY"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    FILE_TRUNCATED = "FILE_TRUNCATED"
    HEADER_MISMATCH = "HEADER_MISMATCH"
    WRONG_FIELD_COUNT = "WRONG_FIELD_COUNT"
    REQUIRED_FIELD_MISSING = "REQUIRED_FIELD_MISSING"
    FIELD_TOO_LONG = "FIELD_TOO_LONG"
    INVALID_STUDENT_ID = "INVALID_STUDENT_ID"
    INVALID_GRADE = "INVALID_GRADE"
    INVALID_USERNAME = "INVALID_USERNAME"
    INVALID_PASSWORD = "INVALID_PASSWORD"
    INVALID_EMAIL = "INVALID_EMAIL"
    INVALID_STATUS = "INVALID_STATUS"
    INVALID_CHARACTERS = "INVALID_CHARACTERS"
    PASSWORD_REQUIRED = "PASSWORD_REQUIRED"
    SCHOOL_NOT_FOUND = "SCHOOL_NOT_FOUND"
    DUPLICATE_STUDENT_ID = "DUPLICATE_STUDENT_ID"
    DUPLICATE_USERNAME = "DUPLICATE_USERNAME"
    USERNAME_TAKEN = "USERNAME_TAKEN"
    STUDENT_EXISTS = "STUDENT_EXISTS"
    STUDENT_NOT_FOUND = "STUDENT_NOT_FOUND"
    NO_LICENSE_AVAILABLE = "NO_LICENSE_AVAILABLE"
    GRADE_NOT_PARTICIPATING = "GRADE_NOT_PARTICIPATING"


# characters shown by name in messages: C0/C1 controls, invisible and bidi formatting
INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00a0\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u2069\ufeff]"
)
_NAMES = {"\r": "<CR>", "\n": "<LF>", "\t": "<TAB>", "\u00a0": "<NBSP>", "\ufeff": "<BOM>"}


def visible(text: str, limit: int | None = None) -> str:
    """`text` for a message: invisible characters named (`<U+202E>`, `<CR>`), cut at `limit`."""
    total = len(text)
    if limit is not None and total > limit:
        text = text[:limit]
    shown = INVISIBLE.sub(lambda m: _NAMES.get(m[0], f"<U+{ord(m[0]):04X}>"), text)
    return shown if len(text) == total else f"{shown}… (the first {limit} of {total} characters)"


def visible_each(values: pd.Series, limit: int) -> pd.Series:
    """`visible(v, limit)` of each (text) value; run only on the values it changes (longer
    than `limit`, or not printable ASCII): a file may have an error on every row."""
    values = values.astype("str")
    changes = (values.str.len() > limit) | ~values.str.fullmatch(r"[\x20-\x7e]*")
    if not changes.any():
        return values
    out = values.astype(object)
    out[changes] = values[changes].map(lambda v: visible(v, limit))
    return out.astype("str")


# An error frame has one error per row. `row` is the record's ordinal among the data
# records (0-based, file order); `line` the physical line where the record starts (header = 1).


# A malformed record's errors (WRONG_FIELD_COUNT) also have this column: the Student ID
# the record names, which their student_id may leave out of the error file (README,
# Security); the full roster never deactivates a student a row names (core.plan).
NAMED_STUDENT_ID = "named_student_id"


def error_frame(
    row: object, line: object, student_id: object, column: object, code: object, message: object
) -> pd.DataFrame:
    """Build an error frame from equally long columns (scalars broadcast)."""
    frame = pd.DataFrame(
        {
            "row": row,
            "line": line,
            "student_id": student_id,
            "column": column,
            "code": code,
            "message": message,
        }
    )
    return frame.astype(
        {
            "row": "int64",
            "line": "int64",
            "student_id": "str",
            "column": "str",
            "code": "str",
            "message": "str",
        }
    )


def empty_errors() -> pd.DataFrame:
    return error_frame([], [], [], [], [], [])


def concat_errors(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """All errors in file order: by row, then in the order the checks produced them."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_errors()
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["row"], kind="stable").reset_index(drop=True)
