"""The reader's fast path: the bit-mask quote-parity scan against a plain
reference, and the rest of read_upload against the csv module on larger, step-crossing
inputs.

`_reference_scan` is the scan as it was before the bit masks: offsets of every quote,
comma, CR and LF and a running count of quotes; slow but easy to read. The bit-mask scan
must give the same answer (None, or the same records) on every input, whichever way the
64-byte words and the classification steps cut the file.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eams_pipeline.core.reading as reading
from eams_pipeline.core.reading import read_upload
from eams_pipeline.core.template import HEADER

_QUOTE, _COMMA, _LF, _CR = ord('"'), ord(","), ord("\n"), ord("\r")
HEADER_LINE = ",".join(HEADER)


def _reference_scan(data: bytes) -> dict | None:
    buf = np.frombuffer(data, dtype=np.uint8)
    n = len(buf)
    interesting = (buf == _QUOTE) | (buf == _COMMA) | (buf == _LF) | (buf == _CR)
    at = np.flatnonzero(interesting)
    byte = buf[at]
    is_quote = byte == _QUOTE
    count = np.cumsum(is_quote, dtype=np.int64)
    if len(count) and count[-1] & 1:
        return None
    outside = (count & 1) == 0

    def byte_at(offsets: np.ndarray) -> np.ndarray:
        return np.where((offsets >= 0) & (offsets < n), buf[np.clip(offsets, 0, n - 1)], 0)

    quotes = at[is_quote]
    opening = quotes[~outside[is_quote]]
    before = byte_at(opening - 1)
    if not np.all((opening == 0) | np.isin(before, [_COMMA, _LF, _QUOTE])):
        return None
    closing = quotes[outside[is_quote]]
    after = byte_at(closing + 1)
    crlf = (after == _CR) & (byte_at(closing + 2) == _LF)
    if not np.all((closing + 1 == n) | np.isin(after, [_COMMA, _LF, _QUOTE]) | crlf):
        return None
    if not np.all(byte_at(at[(byte == _CR) & outside] + 1) == _LF):
        return None
    newlines = at[byte == _LF]
    terminators = at[(byte == _LF) & outside]
    starts = np.concatenate(([0], terminators + 1))
    ends = np.concatenate((terminators, [n]))
    if starts[-1] >= n:
        starts, ends = starts[:-1], ends[:-1]
    ends = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == _CR))
    commas = at[(byte == _COMMA) & outside]
    return {
        "starts": starts.tolist(),
        "ends": ends.tolist(),
        "lines": (np.searchsorted(newlines, starts) + 1).tolist(),
        "end_lines": (np.searchsorted(newlines, ends) + 1).tolist(),
        "fields": (np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1).tolist(),
        "blank": (ends == starts).tolist(),
        "quoted_newlines": bool(np.any(~outside & ~is_quote & (byte != _COMMA))),
    }


def _scan(data: bytes) -> dict | None:
    records = reading._scan_if_unambiguous(data)
    if records is None:
        return None
    return {
        name: value.tolist() if isinstance(value, np.ndarray) else value
        for name, value in vars(records).items()
    }


_PIECES = st.sampled_from(['"', '""', ",", '","', "\r", "\n", "\r\n", "a", "bc", " ", "é"])
_FILES = st.lists(
    st.one_of(_PIECES, st.integers(1, 80).map(lambda k: "x" * k)), min_size=1, max_size=90
).map(lambda pieces: "".join(pieces).encode("utf-8"))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_FILES, step=st.sampled_from([64, 128, 1 << 22]))
def test_the_bit_mask_scan_agrees_with_the_reference(data: bytes, step: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reading, "_MASK_STEP", step)
        assert _scan(data) == _reference_scan(data)


@pytest.mark.parametrize("size", [63, 64, 65, 127, 128, 129, 191, 192, 193])
@pytest.mark.parametrize("quoted", ["\n", ",", '"', "\r\n"])
def test_a_quoted_field_across_every_word_boundary(size: int, quoted: str) -> None:
    # a quoted value holding a separator and ending exactly around a 64-byte word edge
    for shift in range(0, 70, 3):
        value = "y" * shift + quoted.replace('"', '""') + "z" * size
        data = f'a,"{value}",b\n"c",d\r\n'.encode()
        assert _scan(data) == _reference_scan(data), (size, quoted, shift)


def _good(i: int) -> str:
    # every so often a name with whitespace (as utf8_trim_whitespace sees it) at its edges
    pad = ["", " ", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\r\n"][i % 8] if i % 3 else ""
    return (
        f'"S{i}","ID{i:05d}","Doe, Jr.","{pad}Ann{pad}",,"5","user{i}","secret{i}",,"R ""{i}""","A"'
    )


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
@pytest.mark.parametrize("step", [64, 4096])
def test_fast_path_equals_the_csv_module_across_steps(line_end: str, step: int) -> None:
    rows = [HEADER_LINE]
    for i in range(400):
        if i % 37 == 5:
            rows.append(f'"S{i}","ID{i}","a\nb"')  # malformed, with a quoted line break
        elif i % 53 == 7:
            rows.append("")  # blank line
        else:
            rows.append(_good(i))
    data = line_end.join(rows).encode("utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reading, "_MASK_STEP", step)
        fast = read_upload(data)
    slow = read_upload(data, force_fallback=True)
    assert fast.total_rows == slow.total_rows
    assert fast.rows.astype(object).where(fast.rows.notna(), None).values.tolist() == (
        slow.rows.astype(object).where(slow.rows.notna(), None).values.tolist()
    )
    assert fast.malformed.values.tolist() == slow.malformed.values.tolist()
    assert len(fast.malformed) > 0
    assert set(fast.rows["first_name"]) == {"Ann"}  # trimmed, whichever chunk it is in
    assert fast.rows["middle_name"].isna().all()


def test_the_ascii_trim_trims_what_utf8_trim_whitespace_trims() -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pa.array([f"{chr(c)}a{chr(c)}" for c in range(128)] + [chr(c) for c in range(128)])
    fast = pc.ascii_trim(values, characters=reading._ASCII_WHITESPACE)
    assert fast.to_pylist() == pc.utf8_trim_whitespace(values).to_pylist()


@pytest.mark.parametrize("data", [b"", b" ", b"\r\n\t\x0b\x0c ", b"\x1c", b" a ", b"\xa0"])
def test_a_blank_file_is_what_bytes_strip_leaves_empty(data: bytes) -> None:
    blank = not data or data.isspace()
    assert blank == (not data.strip())


# --- validation: the arrow checks against the plain pandas `.str` checks ---------------------


def _reference_schema():  # the checks as they were: pandas .str methods, pandera's ignore_na
    import pandera.pandas as pa

    from eams_pipeline.core import validation as v

    def too_long(column: str) -> pa.Check:
        limit = v.MAX_LENGTH[column]
        return pa.Check(lambda s: s.str.len() <= limit, name="FIELD_TOO_LONG")

    def matches(pattern: str, code: str) -> pa.Check:
        return pa.Check(lambda s: s.str.fullmatch(pattern), name=code)

    def clean(column: str) -> pa.Check:
        return pa.Check(
            lambda s: ~s.str.contains(v.CONTROL_CHARACTERS, regex=True), name="INVALID_CHARACTERS"
        )

    rules = {
        "school_code": [too_long("school_code"), clean("school_code")],
        "student_id": [too_long("student_id"), matches(v.STUDENT_ID_PATTERN, "INVALID_STUDENT_ID")],
        "last_name": [too_long("last_name"), clean("last_name")],
        "first_name": [too_long("first_name"), clean("first_name")],
        "middle_name": [too_long("middle_name"), clean("middle_name")],
        "grade": [matches(v.GRADE_PATTERN, "INVALID_GRADE")],
        "username": [too_long("username"), matches(v.USERNAME_PATTERN, "INVALID_USERNAME")],
        "password": [
            too_long("password"),
            pa.Check(lambda s: s.str.len() >= 6, name="INVALID_PASSWORD"),
        ],
        "email": [too_long("email"), matches(v.EMAIL_PATTERN, "INVALID_EMAIL")],
        "class_name": [too_long("class_name"), clean("class_name")],
        "status": [matches(v.STATUS_PATTERN, "INVALID_STATUS")],
    }
    return pa.DataFrameSchema(
        {
            c: pa.Column(nullable=c not in v.REQUIRED, checks=rules[c], required=True)
            for c in v.COLUMNS
        },
        strict=False,
        name="students.csv",
    )


def _reference_errors(rows):
    from pandera.errors import SchemaErrors

    from eams_pipeline.core import validation as v

    try:
        _reference_schema().validate(rows, lazy=True)
    except SchemaErrors as exc:
        return v._to_errors(exc.failure_cases, rows)
    return v.empty_errors()


def _reference_normalise(rows):
    out = rows.copy()
    out["grade"] = out["grade"].str.upper().str.replace(r"^0(?=[1-9]$)", "", regex=True)
    out["status"] = out["status"].str.upper().replace({"IGNORE": "I"})
    return out


_CHARS = st.sampled_from(
    [
        *"aZ09._-@+ ",
        *["\t", "\x00", "\x1f", "\x7f", "\x85", "\x9f", "é", "\u202e", "\u061c"],
        *["\u2066", "\u200b", "\u00a0", "\U0001f600", "\n"],
    ]
)
_VALUES = st.one_of(
    st.none(),
    st.sampled_from(["K", "k", "07", "7", "0", "13", "12", "A", "ignore", "IGNORE", "x", "Q"]),
    st.sampled_from(["S123", "ab", "abc", "a.b", "abc@def", "Ab1", "é1"]),
    st.sampled_from(["a@b.co", "x.y@sub.example.org", "bad@", "a@b.c1"]),
    st.text(_CHARS, min_size=1, max_size=8),
    st.tuples(st.integers(1, 70), st.sampled_from(["a", "é", "\u202e"])).map(lambda t: t[1] * t[0]),
)


def _frame(values: list[list]) -> object:
    import pandas as pd

    from eams_pipeline.core.template import COLUMNS

    rows = pd.DataFrame(
        {c: pd.Series([r[i] for r in values], dtype="str") for i, c in enumerate(COLUMNS)}
    )
    rows.insert(0, "line", [i + 2 for i in range(len(values))])
    rows.insert(0, "row", list(range(len(values))))
    return rows


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.lists(_VALUES, min_size=11, max_size=11), min_size=1, max_size=12),
    few=st.sampled_from([0.0, 0.05, 1.0]),
)
def test_validation_equals_the_plain_pandas_checks(values: list[list], few: float) -> None:
    import pandas as pd

    from eams_pipeline.core import validation as v

    rows = _frame(values)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(v, "_FEW_DISTINCT", few)
        got = v.validate_rows(rows)
        normalised = v.normalise(rows)
    pd.testing.assert_frame_equal(got, _reference_errors(rows), check_exact=True)
    pd.testing.assert_frame_equal(normalised, _reference_normalise(rows), check_exact=True)


def test_the_shortcuts_only_pass_what_the_patterns_match() -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from eams_pipeline.core import validation as v

    chars = [chr(c) for c in range(0x3000)] + ["\U0001f600"]
    values = pa.chunked_array(
        [pa.array(chars[:500]), pa.array(chars[500:] + [c * 3 for c in chars] + ["", "ab", "abc"])]
    )
    for pattern, min_length in ((v.STUDENT_ID_PATTERN, 1), (v.USERNAME_PATTERN, 3)):
        sure = np.ones(len(values), dtype=bool)
        sure[v._not_surely_alphanumeric(values, min_length)] = False
        match = pc.match_substring_regex(values, pattern).to_numpy(zero_copy_only=False)
        assert not np.any(sure & ~match), pattern
        assert sure.any()
    # printable ASCII never holds a control or text-direction character
    suspects = np.zeros(len(values), dtype=bool)
    suspects[v._values_with_bytes(values, v._not_printable_ascii)] = True
    control = pc.match_substring_regex(values, v.CONTROL_CHARACTERS).to_numpy(zero_copy_only=False)
    assert not np.any(~suspects & control)
    assert control.any() and (~suspects).any()
    # lengths as .str.len() counts them, on a sliced chunk too
    sliced = pa.chunked_array([values.combine_chunks().slice(3, 4000)])
    expected = pc.utf8_length(sliced).to_numpy(zero_copy_only=False)
    assert v._char_lengths(sliced).tolist() == expected.tolist()


def _reference_to_frame(table):  # as it was: every column trimmed and checked
    import pyarrow as pa
    import pyarrow.compute as pc

    from eams_pipeline.core.template import COLUMNS

    columns = {}
    for name in COLUMNS:
        trimmed = pc.utf8_trim_whitespace(table.column(name))
        empty = pc.equal(trimmed, "")
        bare = pc.utf8_trim(trimmed, characters=reading._SPACES_AND_ZERO_WIDTH)
        empty = pc.or_(empty, pc.equal(bare, ""))
        columns[name] = pc.if_else(empty, pa.scalar(None, pa.string()), trimmed)
    return pa.table(columns).to_pandas()


_EDGES = ["", " ", "\t", "\x0b", "\x1c", "\x1f", "\u00a0", "\u200b", "\ufeff", "\u3000", "\u2028"]
_EDGES += ["\u00ad", "\u180e", "\u2060", "é", "\u202e", "x"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cells=st.lists(
        st.tuples(
            st.sampled_from(_EDGES), st.sampled_from(["", "a", "é", "a b"]), st.sampled_from(_EDGES)
        ),
        min_size=1,
        max_size=40,
    ),
    split=st.integers(0, 40),
    column=st.integers(0, 10),
)
def test_to_frame_equals_trimming_every_column(cells: list, split: int, column: int) -> None:
    import pandas as pd
    import pyarrow as pa

    from eams_pipeline.core.template import COLUMNS

    values = ["".join(cell) for cell in cells]
    plain = ["v"] * len(values)
    split = min(split, len(values))

    def chunked(vs: list[str]) -> pa.ChunkedArray:  # two chunks, the second one sliced
        tail = pa.array(["pad", *vs[split:]], pa.string()).slice(1)
        return pa.chunked_array([pa.array(vs[:split], pa.string()), tail])

    table = pa.table({c: chunked(values if i == column else plain) for i, c in enumerate(COLUMNS)})
    expected = _reference_to_frame(table)
    ascii_only = all(v.isascii() for v in values)
    pd.testing.assert_frame_equal(reading._to_frame(table, ascii_only=ascii_only), expected)
    if ascii_only:
        pd.testing.assert_frame_equal(reading._to_frame(table, ascii_only=False), expected)


@pytest.mark.parametrize("edge", _EDGES)
def test_to_frame_trims_each_character_alone(edge: str) -> None:
    import pandas as pd
    import pyarrow as pa

    from eams_pipeline.core.template import COLUMNS

    for value in (f"a{edge}", f"{edge}a", edge, f"{edge}{edge}"):
        column = pa.chunked_array([pa.array(["v", value, "w"], pa.string())])
        table = pa.table({c: column for c in COLUMNS})
        got = reading._to_frame(table, ascii_only=value.isascii())
        pd.testing.assert_frame_equal(got, _reference_to_frame(table))


def test_the_byte_classes_are_the_characters_they_name() -> None:
    from eams_pipeline.core import validation as v

    every = np.arange(256, dtype=np.uint8)
    named = [chr(b).isascii() and chr(b).isalnum() for b in range(256)]
    assert (~v._not_alphanumeric(every)).tolist() == named
    assert (~v._not_printable_ascii(every)).tolist() == [0x20 <= b <= 0x7E for b in range(256)]
    assert v._not_ascii(every).tolist() == [b >= 0x80 for b in range(256)]
