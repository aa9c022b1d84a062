"""Column rules of SPEC §3 as a pandera schema, run lazily so every broken rule is reported.

A check's name is the error code it raises; a missing required value is
REQUIRED_FIELD_MISSING and no other rule runs on that cell. Rules that need the
database (school codes, existing students, usernames taken, licenses) belong to the plan.

The checks run on the arrow strings behind the columns (pyarrow compute, the kernels the
pandas `.str` methods call), each on the whole column at once: a missing value passes
every check but the schema's not-nullable one, as pandera's `ignore_na` would have it, but
without a copy of the column without its missing values per check. A check whose rule is
a regular expression runs it on the column's distinct values when they are few (grade,
status), and the control-character rule only on the values that are not printable ASCII
(which it can never match).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
from pandera.errors import SchemaErrors

from eams_pipeline.core.errors import (
    ErrorCode,
    empty_errors,
    error_frame,
    visible,
    visible_each,
)
from eams_pipeline.core.template import (
    COLUMNS,
    DISPLAY_NAME,
    GRADE_PATTERN,
    STATUS_PATTERN,
    STUDENT_ID_PATTERN,
    USERNAME_PATTERN,
)

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
    ErrorCode.INVALID_CHARACTERS: "{column} contains control or text-direction characters.",
}
# What a message may repeat of the value it is about (README, Security: what a message may
# and may not quote). Grade and Status are short codes: the value found is quoted (capped,
# invisible characters named), it tells the district what its SIS writes there. No other
# value is: Password never; Username and Email are the Password's neighbours, where a
# swapped export puts the password; the Student ID is in the error file's own column; a
# name, class or school code is described (its length, which control character where).
QUOTED_COLUMNS = frozenset({"grade", "status"})
SECRET_COLUMNS = frozenset({"password"})
_QUOTE_LIMIT = 20
# the error file's Student ID column: capped (a valid one has at most 32 characters),
# invisible and control characters named
STUDENT_ID_SHOWN = 64


def _text(s: pd.Series) -> pyarrow.ChunkedArray:
    """The arrow strings behind a text column (no copy for the reader's columns)."""
    if not hasattr(s.array, "__arrow_array__"):
        s = s.astype("str")
    values = s.array.__arrow_array__()
    return values if isinstance(values, pyarrow.ChunkedArray) else pyarrow.chunked_array([values])


def _vectorised(code: ErrorCode, passes: Callable[[pyarrow.ChunkedArray], object]) -> pa.Check:
    """A check of `code` by `passes`: the column's arrow strings to a boolean per value
    (an arrow or numpy array; a missing value may come out as anything: it passes)."""

    def check(s: pd.Series) -> pd.Series:
        values = _text(s)
        result = passes(values)
        if isinstance(result, pyarrow.ChunkedArray | pyarrow.Array):
            result = pc.fill_null(result, True).to_numpy(zero_copy_only=False)
        if values.null_count:
            result = result | pc.is_null(values).to_numpy(zero_copy_only=False)
        return pd.Series(np.asarray(result, dtype=bool), index=s.index, copy=False)

    return pa.Check(check, name=code.value, ignore_na=False)


def _spans(values: pyarrow.ChunkedArray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(offsets, bytes) of each chunk, as numpy views of its arrow buffers: value i of the
    chunk is bytes[offsets[i] : offsets[i + 1]] (a missing value's span is meaningless)."""
    if not pyarrow.types.is_large_string(values.type):
        values = values.cast(pyarrow.large_string())
    for chunk in values.chunks:
        if len(chunk) == 0:
            continue
        _, offsets, data = chunk.buffers()
        start = chunk.offset
        offsets = np.frombuffer(offsets, dtype=np.int64)[start : start + len(chunk) + 1]
        data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
        yield offsets, data


def _values_with_bytes(
    values: pyarrow.ChunkedArray, outside: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """The (sorted) positions of the values holding a byte for which `outside` is true;
    one vectorised pass over the column's bytes."""
    found, base = [], 0
    for offsets, data in _spans(values):
        if len(offsets) > 1:
            first = int(offsets[0])
            hits = np.flatnonzero(outside(data[first : int(offsets[-1])])) + first
            if len(hits):
                found.append(np.unique(np.searchsorted(offsets, hits, side="right") - 1) + base)
        base += len(offsets) - 1
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def _byte_lengths(values: pyarrow.ChunkedArray) -> np.ndarray:
    return np.concatenate(
        [np.diff(offsets) for offsets, _ in _spans(values)] or [np.empty(0, np.int64)]
    )


def _not_ascii(data: np.ndarray) -> np.ndarray:
    return data >= 0x80


def _not_printable_ascii(data: np.ndarray) -> np.ndarray:
    return (data < 0x20) | (data > 0x7E)


def _not_alphanumeric(data: np.ndarray) -> np.ndarray:
    """Not 0-9, A-Z or a-z (uint8 arithmetic wraps: one range test each; `| 0x20` lowers
    A-Z and maps nothing else into a-z)."""
    digit = (data - np.uint8(0x30)) < 10
    letter = ((data | np.uint8(0x20)) - np.uint8(0x61)) < 26
    return ~(digit | letter)


def _char_lengths(values: pyarrow.ChunkedArray) -> np.ndarray:
    """`.str.len()`: the bytes of an ASCII value, utf8_length of the others."""
    lengths = _byte_lengths(values)
    wide = _values_with_bytes(values, _not_ascii)
    if len(wide):
        lengths[wide] = pc.fill_null(pc.utf8_length(values.take(wide)), 0).to_numpy()
    return lengths


def _too_long(column: str) -> pa.Check:
    limit = MAX_LENGTH[column]

    def passes(values: pyarrow.ChunkedArray) -> object:
        # a value of at most `limit` bytes has at most `limit` characters
        if len(values) == 0 or _byte_lengths(values).max() <= limit:
            return np.ones(len(values), dtype=bool)
        return _char_lengths(values) <= limit

    return _vectorised(ErrorCode.FIELD_TOO_LONG, passes)


# a column with at most this share of distinct values has its pattern run on those
_FEW_DISTINCT = 0.05


def _matches(pattern: str, code: ErrorCode, *, alphanumeric_from: int | None = None) -> pa.Check:
    """`.str.fullmatch(pattern)`. With `alphanumeric_from`, the pattern is one character
    class holding A-Z a-z 0-9, repeated at least that many times: a value of that many
    ASCII letters and digits and nothing else matches without running it (a test checks
    the patterns it is given for)."""
    # the pattern as `.str.fullmatch` runs it (every pattern here is anchored both ends)
    assert pattern.startswith("^") and pattern.endswith("$"), pattern

    def passes(values: pyarrow.ChunkedArray) -> object:
        if alphanumeric_from is None:
            return _regex_by_distinct(values, pattern)
        ok = np.ones(len(values), dtype=bool)
        at = _not_surely_alphanumeric(values, alphanumeric_from)
        ok[at] = _regex_at(values, pattern, at)
        return ok

    return _vectorised(code, passes)


def _not_surely_alphanumeric(values: pyarrow.ChunkedArray, min_length: int) -> np.ndarray:
    """Positions of the values that are not min_length or more ASCII letters and digits."""
    short = np.flatnonzero(_byte_lengths(values) < max(min_length, 1))
    return np.union1d(short, _values_with_bytes(values, _not_alphanumeric))


def _regex_at(values: pyarrow.ChunkedArray, pattern: str, at: np.ndarray) -> np.ndarray:
    """match_substring_regex of the values at positions `at` (a missing value: False)."""
    if len(at) == 0:
        return np.zeros(0, dtype=bool)
    found = pc.match_substring_regex(values.take(at), pattern)
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def _regex_by_distinct(values: pyarrow.ChunkedArray, pattern: str) -> object:
    """match_substring_regex(values, pattern), run once per distinct value when the column
    has few of them (grade, status), else on every value."""
    sample = values.slice(0, 1000)
    if len(sample) and len(pc.unique(sample)) > _FEW_DISTINCT * len(sample):
        return pc.match_substring_regex(values, pattern)
    encoded = pc.dictionary_encode(values).combine_chunks()
    if len(encoded.dictionary) > _FEW_DISTINCT * max(len(values), 1) + 100:
        return pc.match_substring_regex(values, pattern)
    per_distinct = pc.match_substring_regex(encoded.dictionary, pattern)
    return pc.take(per_distinct, encoded.indices)


def _no_control_characters() -> pa.Check:
    def passes(values: pyarrow.ChunkedArray) -> object:
        # printable ASCII (U+0020..U+007E) holds none of CONTROL_CHARACTERS
        ok = np.ones(len(values), dtype=bool)
        at = _values_with_bytes(values, _not_printable_ascii)
        ok[at] = ~_regex_at(values, CONTROL_CHARACTERS, at)
        return ok

    return _vectorised(ErrorCode.INVALID_CHARACTERS, passes)


def _min_length(length: int, code: ErrorCode) -> pa.Check:
    return _vectorised(code, lambda values: _char_lengths(values) >= length)


_RULES: dict[str, list[pa.Check]] = {
    "school_code": [_too_long("school_code"), _no_control_characters()],
    "student_id": [
        _too_long("student_id"),
        _matches(STUDENT_ID_PATTERN, ErrorCode.INVALID_STUDENT_ID, alphanumeric_from=1),
    ],
    "last_name": [_too_long("last_name"), _no_control_characters()],
    "first_name": [_too_long("first_name"), _no_control_characters()],
    "middle_name": [_too_long("middle_name"), _no_control_characters()],
    "grade": [_matches(GRADE_PATTERN, ErrorCode.INVALID_GRADE)],
    "username": [
        _too_long("username"),
        _matches(USERNAME_PATTERN, ErrorCode.INVALID_USERNAME, alphanumeric_from=3),
    ],
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
    details = _details(code, column, failures["failure_case"])
    message = message + details
    # the line and student ID of each failure's row (not a copy of every column's rows)
    at = rows.index.get_indexer(index)
    if (at < 0).any():
        raise KeyError(index[at < 0].tolist())
    errors = error_frame(
        index,
        rows["line"].to_numpy()[at],
        visible_each(rows["student_id"].take(at).fillna(""), STUDENT_ID_SHOWN).to_numpy(),
        display.to_numpy(),
        code.to_numpy(),
        message.to_numpy(),
    )
    # file order, then template column order within a row
    errors["_col"] = errors["column"].map({DISPLAY_NAME[c]: i for i, c in enumerate(COLUMNS)})
    errors = errors.sort_values(["row", "_col"], kind="stable").drop(columns="_col")
    return errors.reset_index(drop=True)


def _details(code: pd.Series, column: pd.Series, found: pd.Series) -> pd.Series:
    """What each failure's message adds about its value without quoting it, except a
    Grade's or a Status's (QUOTED_COLUMNS): its length, what is wrong in it."""
    details = pd.Series("", index=found.index, dtype=object)
    present = found.notna() & (code != ErrorCode.REQUIRED_FIELD_MISSING.value)
    text = found.where(present, "").astype(str)
    quoted = present & column.isin(QUOTED_COLUMNS)
    details[quoted] = " Found: " + visible_each(text[quoted], _QUOTE_LIMIT)
    long = present & (code == ErrorCode.FIELD_TOO_LONG.value) & ~column.isin(SECRET_COLUMNS)
    details[long] = " It has " + text[long].str.len().astype(str) + " characters."
    for failing, reason in (
        (ErrorCode.INVALID_USERNAME, _username_reason),
        (ErrorCode.INVALID_EMAIL, _email_reason),
        (ErrorCode.INVALID_STUDENT_ID, _student_id_reason),
        (ErrorCode.INVALID_CHARACTERS, _control_characters_found),
    ):
        at = present & (code == failing.value)
        if at.any():
            details[at] = " " + reason(text[at])
    return details


def _username_reason(values: pd.Series) -> pd.Series:
    return pd.Series(
        np.select(
            [values.str.len() < 3, values.str.contains(r"\s"), values.str.len() > 0],
            [
                "It is shorter than 3 characters.",
                "It contains a space.",
                "It contains a character other than these.",
            ],
            "",
        ),
        index=values.index,
    )


def _student_id_reason(values: pd.Series) -> pd.Series:
    return pd.Series(
        np.where(
            values.str.contains(r"\s"),
            "It contains a space.",
            "It contains a character other than these.",
        ),
        index=values.index,
    )


def _email_reason(values: pd.Series) -> pd.Series:
    ats = values.str.count("@")
    local = values.str.split("@", n=1).str[0]
    domain = values.str.split("@", n=1).str[-1]
    return pd.Series(
        np.select(
            [
                ats == 0,
                ats > 1,
                values.str.contains(r"\s"),
                local.str.len() == 0,
                ~domain.str.contains(r"\."),
            ],
            [
                "It has no @.",
                "It has more than one @.",
                "It contains a space.",
                "Nothing comes before the @.",
                "The part after the @ is not a domain name such as school.org.",
            ],
            "It is not of the form name@school.org.",
        ),
        index=values.index,
    )


def _control_characters_found(values: pd.Series) -> pd.Series:
    """Which control or text-direction characters, at which positions: `<TAB> at
    character 4` (never the value around them)."""
    pattern = re.compile(CONTROL_CHARACTERS)

    def found(value: str) -> str:
        hits = [(m.start() + 1, visible(m[0])) for m in pattern.finditer(value)]
        shown = ", ".join(f"{name} at character {at}" for at, name in hits[:3])
        more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
        return f"Found: {shown}{more}." if hits else ""

    return values.map(found)


def normalise(rows: pd.DataFrame) -> pd.DataFrame:
    """Stored forms: Grade `K` or `1`..`12` without a leading zero, Status upper-case
    (`IGNORE` read as `I`)."""
    out = rows.copy(deep=False)  # copy-on-write: only the two columns below are new
    out["grade"] = _per_distinct(
        out["grade"], lambda s: s.str.upper().str.replace(r"^0(?=[1-9]$)", "", regex=True)
    )
    out["status"] = out["status"].str.upper().replace({"IGNORE": "I"})
    return out


def _per_distinct(s: pd.Series, each: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """each(s) for a function of each value on its own, computed once per distinct value
    when they are few (the grade regex has a look-ahead, which pyarrow's RE2 does not
    run: pandas runs it in Python, value by value)."""
    codes, distinct = pd.factorize(s)
    if len(distinct) > _FEW_DISTINCT * len(s) + 100:
        return each(s)
    mapped = each(pd.Series(distinct, dtype=s.dtype))
    return pd.Series(mapped.array.take(codes, allow_fill=True), index=s.index, name=s.name)
