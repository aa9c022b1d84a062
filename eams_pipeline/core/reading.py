"""Bytes in, a DataFrame of text out: the file-level checks of SPEC §2.

Each data record keeps its ordinal (`row`, 0-based) and the physical line where it starts
(`line`, the header is line 1), so every later error names the line the district sees in
its editor, even when quoted fields span lines.

The reader is total: whatever the bytes, it returns the records or raises FileRejected
with a line; no csv/pyarrow exception escapes (see `_csv_records`).

What a record is. Line breaks are LF or CRLF; a file with no LF outside quotes but with CRs
(Excel's "CSV (Macintosh)") has CR line endings, and is read as if every CR were an LF
(`_line_ends`). Elsewhere a CR that is not part of a CRLF is an ordinary character of its
value. A `"` opens a quoted field only at the start of a field; anywhere else it is a
literal character (what Excel and the csv module do). That is the one definition, and the
standard library's csv module implements it (`_csv_records`, the fallback).

The fast path. A vectorised quote-parity scan (numpy) finds record boundaries, and pyarrow
parses in parallel. The parity scan and pyarrow only mean the definition above when the
quotes are well placed, so the fast path runs only when the scan proves it
(`_scan_if_unambiguous`): an even number of quotes; every opening quote at a field start
(after a comma, an LF or the file's start) or right after a closing quote (a doubled
`""`); every closing quote followed by a comma, an LF, a CRLF, a quote (doubled) or the
end; no CR outside quotes but those of CRLFs. Under these conditions the quote parity, the
csv module and pyarrow split records and fields identically (a hypothesis test checks it
against the fallback, record by record, values and lines). Anything else (stray quotes,
an unterminated quote, a stray CR) goes to the csv module, which is slower but decides
stray quotes the way the district's spreadsheet does. pyarrow's row count is still checked
against the scan; a difference also falls back.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from eams_pipeline.core.errors import (
    INVISIBLE,
    NAMED_STUDENT_ID,
    ErrorCode,
    empty_errors,
    error_frame,
    visible,
)
from eams_pipeline.core.template import (
    COLUMNS,
    EXPECTED_FIELD_COUNT,
    GRADE_PATTERN,
    HEADER,
    STATUS_PATTERN,
)

UTF8_BOM = b"\xef\xbb\xbf"
_QUOTE, _COMMA, _LF, _CR = ord('"'), ord(","), ord("\n"), ord("\r")
# how much of a found header a HEADER_MISMATCH message repeats
HEADER_ECHO_LIMIT = 500
# a header line longer than this is rejected without parsing it (the template's is 120 bytes)
HEADER_MAX_BYTES = 1 << 20
# a malformed record's second field shown as its Student ID: only a valid Student ID
_STUDENT_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
# a value made only of these and spaces is empty: zero-width and invisible characters
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u180e\u00ad"
_SPACES_AND_ZERO_WIDTH = (
    ZERO_WIDTH
    + " \t\r\n\x0b\x0c\x85\u00a0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))  # en quad .. hair space
)
# what pyarrow's utf8_trim_whitespace trims among ASCII characters (a test checks it)
_ASCII_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
_BARE_CR = re.compile(r"\r(?!\n)")


class FileRejected(Exception):
    """A file-level error: nothing of the file is applied."""

    def __init__(self, code: ErrorCode, line: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.line = line
        self.message = message


@dataclass(frozen=True)
class ParsedFile:
    """The well-formed records of an upload and the errors of the malformed ones."""

    rows: pd.DataFrame  # columns: row, line, then COLUMNS as trimmed text (NA = empty)
    malformed: pd.DataFrame  # error frame: WRONG_FIELD_COUNT, one per malformed record
    total_rows: int  # every data record, well-formed or not


def read_upload(data: bytes, *, force_fallback: bool = False) -> ParsedFile:
    """Parse an upload. Raises FileRejected for FILE_ENCODING, FILE_EMPTY, HEADER_MISMATCH."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    ascii_only = data.isascii()
    _check_text(data, ascii_only)
    if not data or data.isspace():  # nothing but ASCII whitespace (bytes.strip's)
        raise FileRejected(ErrorCode.FILE_EMPTY, 1, "The file is empty.")
    data = _line_ends(data)
    _check_header_size(data, data.find(b"\n"))
    records = None if force_fallback else _scan_if_unambiguous(data)
    if records is None:
        return _read_with_csv_module(data.decode("utf-8"))
    _check_header_size(data, int(records.ends[0]))
    _check_header(_record_fields(data, records, 0))

    data_ids = np.flatnonzero(~records.blank[1:]) + 1
    if len(data_ids) == 0:
        raise FileRejected(ErrorCode.FILE_EMPTY, 2, "The file has a header but no data rows.")
    if not data.endswith(b"\n") and data[int(records.starts[-1]) :].strip(_PADDING):
        # the scan proved every quote closed: only the fields count
        _check_last_record(int(records.lines[-1]), int(records.fields[-1]), open_quote=False)
    good = records.fields[data_ids] == EXPECTED_FIELD_COUNT
    # the body without a copy of it
    body = pa.py_buffer(data)[int(records.starts[1]) :]

    table = _parse_with_arrow(body, int(good.sum()), records.quoted_newlines)
    if table is None:
        return _read_with_csv_module(data.decode("utf-8"))

    rows = _to_frame(table, ascii_only=ascii_only)
    rows.insert(0, "line", records.lines[data_ids[good]])
    rows.insert(0, "row", np.flatnonzero(good))
    bad_ids = data_ids[~good]
    # the record before each bad one (the header before the first data record)
    before = np.concatenate(([0], data_ids[:-1]))[~good]
    malformed = _malformed_errors(
        rows_idx=np.flatnonzero(~good),
        lines=records.lines[bad_ids],
        end_lines=records.end_lines[bad_ids],
        field_counts=records.fields[bad_ids],
        records=[_record_fields(data, records, int(i)) for i in bad_ids],
        before_fields=records.fields[before],
        before_end_lines=records.end_lines[before],
    )
    return ParsedFile(
        rows=rows.set_index(rows["row"].rename(None)), malformed=malformed, total_rows=len(data_ids)
    )


def _check_text(data: bytes, ascii_only: bool) -> None:
    try:
        if not ascii_only:  # ASCII is UTF-8
            data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        if exc.end == len(data) and exc.reason == "unexpected end of data":
            raise FileRejected(  # a character's first bytes, then nothing: a cut file
                ErrorCode.FILE_TRUNCATED,
                line,
                f"The file ends in the middle of a character on line {line}: it was cut "
                f"short. {_TRUNCATED_ADVICE}",
            ) from None
        raise FileRejected(
            ErrorCode.FILE_ENCODING,
            line,
            f"The file is not valid UTF-8 text: byte 0x{data[exc.start]:02X} on line {line} "
            "cannot be decoded. Export the file as UTF-8 (CSV UTF-8).",
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise FileRejected(
            ErrorCode.FILE_ENCODING,
            line,
            f"The file is not text: a NUL byte on line {line}. Export the file as UTF-8 CSV.",
        )


def _line_ends(data: bytes) -> bytes:
    """A file whose lines end with a bare CR (no LF outside quotes, a CR outside quotes) is
    read with every CR as an LF; other files are returned as they are."""
    if b"\r" not in data:
        return data
    buf = np.frombuffer(data, dtype=np.uint8)
    at = np.flatnonzero((buf == _QUOTE) | (buf == _LF) | (buf == _CR))
    byte = buf[at]
    outside = (np.cumsum(byte == _QUOTE, dtype=np.uint8) & 1) == 0
    if np.any(outside & (byte == _LF)) or not np.any(outside & (byte == _CR)):
        return data
    return data.replace(b"\r", b"\n")


@dataclass(frozen=True)
class _Records:
    starts: np.ndarray  # byte offset where each record starts
    ends: np.ndarray  # byte offset just past each record's content (before CR LF / LF)
    lines: np.ndarray  # physical line where each record starts (1-based)
    end_lines: np.ndarray  # physical line where each record ends
    fields: np.ndarray  # number of fields (unquoted commas + 1)
    blank: np.ndarray  # empty line
    quoted_newlines: bool  # a quoted field holds a CR or LF somewhere in the file


def _scan_if_unambiguous(data: bytes) -> _Records | None:
    """Record boundaries by quote parity (no Python loop), or None when a quote or a CR is
    placed so that parity and the csv module could disagree (see the module docstring).

    The parity runs on bit masks (one bit per byte of the file, 64 to a word, as simdjson
    does): whether a byte is inside quotes is the running XOR of the quote bits before and
    at it, and every check is a few word-wide operations on arrays an eighth of the file's
    size, with no array of offsets as long as the file's quotes or commas."""
    buf = np.frombuffer(data, dtype=np.uint8)
    n = len(buf)
    with_cr = b"\r" in data
    marks, newlines = _byte_masks(
        buf, (_QUOTE, _COMMA, _LF, _CR) if with_cr else (_QUOTE, _COMMA, _LF)
    )
    quote, comma, lf = marks[_QUOTE], marks[_COMMA], marks[_LF]
    cr = marks.get(_CR)
    if int(np.bitwise_count(quote).sum()) & 1:
        return None  # a quote is never closed
    # a quote's bit: it opens; another byte's bit: it is quoted
    inside = _running_parity(quote)
    # an opening quote at a field start (the file's start, after a comma or an LF) or
    # right after a closing quote (a doubled "")
    field_start = _shifted_up(comma | lf | quote)
    field_start[0] |= np.uint64(1)
    if np.any(quote & inside & ~field_start):
        return None
    del field_start
    # a closing quote before a comma, an LF, a CRLF, a quote (doubled) or the end
    crlf = cr & _shifted_down(lf) if cr is not None else None
    field_end = _shifted_down(comma | lf | quote if crlf is None else comma | lf | quote | crlf)
    if n:  # the last byte is followed by the end
        field_end[(n - 1) >> 6] |= np.uint64(1) << np.uint64((n - 1) & 63)
    if np.any(quote & ~inside & ~field_end):
        return None
    del field_end
    if cr is not None and np.any(cr & ~inside & ~crlf):
        return None  # a CR outside quotes that does not end a line
    quoted_newlines = bool(np.any(lf & inside)) or (cr is not None and bool(np.any(cr & inside)))
    terminators = newlines[~_bit_at(inside, newlines)] if quoted_newlines else newlines
    starts = np.concatenate(([0], terminators + 1))
    ends = np.concatenate((terminators, [n]))
    if starts[-1] >= n:  # the file ends with a newline: no record after it
        starts, ends = starts[:-1], ends[:-1]
    # strip the CR of a CRLF ending
    if cr is not None:
        has_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == _CR)
        ends = ends - has_cr
    # fields: the commas outside quotes between a record's start and its end, plus one
    count_before = _counter(comma & ~inside)
    fields = count_before(ends) - count_before(starts) + 1
    if quoted_newlines:
        lines = np.searchsorted(newlines, starts) + 1
        end_lines = np.searchsorted(newlines, ends) + 1
    else:  # every LF ends a record: record i starts and ends on line i + 1
        lines = np.arange(1, len(starts) + 1)
        end_lines = lines
    return _Records(
        starts=starts,
        ends=ends,
        lines=lines,
        end_lines=end_lines,
        fields=fields,
        blank=ends == starts,
        quoted_newlines=quoted_newlines,
    )


# bytes classified per step by _byte_masks (a multiple of 64: a step fills whole words)
_MASK_STEP = 1 << 22
_WORD = np.dtype("<u8")
_ALL_ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def _byte_masks(
    buf: np.ndarray, values: tuple[int, ...]
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """For each byte value, a bit mask of where it occurs in buf: bit k of word w (uint64)
    is byte 64w + k; the words run one past the file's end (zero bits), so that a position
    equal to the file's length has a word. Also the offsets of the LFs. Step by step, so
    no temporary is as large as the file."""
    n = len(buf)
    size = (n // 64 + 1) * 8
    masks = {value: np.zeros(size, np.uint8) for value in values}
    newlines = []
    for offset in range(0, n, _MASK_STEP):
        step = buf[offset : offset + _MASK_STEP]
        at = offset // 8
        for value, mask in masks.items():
            hits = step == value
            packed = np.packbits(hits, bitorder="little")
            mask[at : at + len(packed)] = packed
            if value == _LF:
                newlines.append(np.flatnonzero(hits) + offset)
    return (
        {value: mask.view(_WORD) for value, mask in masks.items()},
        np.concatenate(newlines) if newlines else np.empty(0, np.int64),
    )


def _running_parity(bits: np.ndarray) -> np.ndarray:
    """Bit p of the result: the parity of the set bits at positions <= p."""
    parity = bits.copy()
    for shift in (1, 2, 4, 8, 16, 32):  # XOR prefix within each word
        parity ^= parity << np.uint64(shift)
    # and the parity of every earlier word
    odd_before = np.zeros(len(bits), dtype=bool)
    odd_before[1:] = (np.cumsum(np.bitwise_count(bits[:-1]), dtype=np.int64) & 1).astype(bool)
    parity[odd_before] ^= _ALL_ONES
    return parity


def _shifted_up(bits: np.ndarray) -> np.ndarray:
    """Bit p of the result is bit p - 1 of bits (the byte before)."""
    out = bits << np.uint64(1)
    out[1:] |= bits[:-1] >> np.uint64(63)
    return out


def _shifted_down(bits: np.ndarray) -> np.ndarray:
    """Bit p of the result is bit p + 1 of bits (the byte after)."""
    out = bits >> np.uint64(1)
    out[:-1] |= bits[1:] << np.uint64(63)
    return out


def _bit_at(bits: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return ((bits[positions >> 6] >> (positions & 63).astype(np.uint64)) & np.uint64(1)).astype(
        bool
    )


def _counter(bits: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A function: how many bits are set at positions < each of the given positions."""
    words_before = np.zeros(len(bits) + 1, dtype=np.int64)
    np.cumsum(np.bitwise_count(bits), out=words_before[1:])

    def count_before(positions: np.ndarray) -> np.ndarray:
        word = positions >> 6
        below = (np.uint64(1) << (positions & 63).astype(np.uint64)) - np.uint64(1)
        return words_before[word] + np.bitwise_count(bits[word] & below)

    return count_before


def _allow_fields_of(size: int) -> None:
    """The csv module refuses fields over 128 KiB by default; a file is already in memory,
    so a field as long as the file is allowed (the limit is process-wide and only raised)."""
    if csv.field_size_limit() < size + 1:
        csv.field_size_limit(size + 1)


def _record_fields(data: bytes, records: _Records, i: int) -> list[str]:
    """The fields of one scanned record (its quotes are well placed: see the scan)."""
    text = data[records.starts[i] : records.ends[i]].decode("utf-8")
    _allow_fields_of(len(text))
    return next(csv.reader([text]), [])


def _check_header_size(data: bytes, end: int) -> None:
    """A header record over HEADER_MAX_BYTES (e.g. 50 MB without a line break) is not parsed:
    that would cost memory for a message that shows its first names only."""
    size = len(data) if end < 0 else end
    if size > HEADER_MAX_BYTES:
        start = data[: HEADER_ECHO_LIMIT * 4].decode("utf-8", errors="replace")
        # its first names (the last may be cut); a CR or LF (quoted, or a bare CR) would
        # stop the csv module: they are no part of a column name anyway
        start = start[:HEADER_ECHO_LIMIT].replace("\r", " ").replace("\n", " ")
        first = next(csv.reader([start], strict=False), [])[:-1]
        raise FileRejected(
            ErrorCode.HEADER_MISMATCH, 1, header_mismatch_message(first, line_bytes=size)
        )


# a last record of only these is trailing padding, not a cut row: it stays WRONG_FIELD_COUNT
_PADDING = b" \t\r"
_TRUNCATED_ADVICE = (
    "The export or the upload did not finish (or the file was taken while it was still "
    "being written). Nothing was applied: upload the complete file again."
)


def _check_last_record(line: int, fields: int, *, open_quote: bool) -> None:
    """FILE_TRUNCATED for a file that ends without a line break inside its last record: in
    a quoted value that was never closed, or with fewer fields than the header (a complete
    last row without a final line break is accepted: many exports omit it). The caller
    leaves out a last record of only spaces, tabs and CRs (trailing padding)."""
    if open_quote:
        raise FileRejected(
            ErrorCode.FILE_TRUNCATED,
            line,
            f"The file ends inside a quoted value: the last record, from line {line}, has no "
            f"closing quote and no line break after it, so the file was cut short (or a "
            f"quote on line {line} is not closed). {_TRUNCATED_ADVICE}",
        )
    if fields < EXPECTED_FIELD_COUNT:
        raise FileRejected(
            ErrorCode.FILE_TRUNCATED,
            line,
            f"The file ends in the middle of a row: the last row (line {line}) has {fields} "
            f"of the template's {EXPECTED_FIELD_COUNT} fields and no line break after it, so "
            f"the file was cut short. {_TRUNCATED_ADVICE}",
        )


def _ends_in_quotes(record: str) -> bool:
    """Does the csv module end the (last) record of this text inside a quoted field? A line
    after it is then read as part of the field instead of as a record of its own."""
    sentinel = "\x01"
    tail = _BARE_CR.sub("\x00", record) + "\n" + sentinel
    last = deque(csv.reader(io.StringIO(tail, newline="\n"), strict=False), maxlen=1)
    return list(last) != [[sentinel]]


def _check_header(found: list[str]) -> None:
    names = tuple(name.strip() for name in found)
    if names != HEADER:
        raise FileRejected(ErrorCode.HEADER_MISMATCH, 1, header_mismatch_message(list(names)))


# What a HEADER_MISMATCH message may repeat of the first line (README, Security). The line
# is often not a header at all but the first student's row (the export left the header
# out), or a header with a row glued to it: its values may be names, IDs and a password.
# A found name is shown only when it looks like a column name: letters, spaces and
# `_ - . ' / ( )` (invisible characters are shown by name), at most 40 characters, and
# either close to a template name, or in a line that is plainly a header (no digit and no
# @ anywhere, at least half its names close to template names) and not where a shifted
# row's Password would be (the 8th name, or the 4th from the end).
_SHOWN_NAME_CHARS = 40
_EXAMINED_NAMES = 64
_NAME_LIKE = re.compile(r"[^\W\d]|[ _\-.'/()]")
_TEMPLATE_KEYS = tuple(re.sub(r"[^a-z]", "", name.lower()) for name in HEADER)
_GRADE = re.compile(GRADE_PATTERN)
_STATUS = re.compile(STATUS_PATTERN)
_NOT_SHOWN = "[not shown]"


def _name_key(name: str) -> str:
    """A name as compared with the template's: letters only, lower case."""
    return "".join(c for c in name.casefold() if c.isalpha())


def _name_like(name: str) -> bool:
    return 0 < len(name) <= _SHOWN_NAME_CHARS and all(
        _NAME_LIKE.match(c) or INVISIBLE.match(c) for c in name
    )


def _close_to_a_template_name(name: str) -> bool:
    key = _name_key(name)
    if len(key) < 3:
        return False
    if key in _TEMPLATE_KEYS:
        return True
    return any(difflib.SequenceMatcher(None, key, t).ratio() >= 0.8 for t in _TEMPLATE_KEYS)


def header_mismatch_message(found: list[str], *, line_bytes: int | None = None) -> str:
    """HEADER_MISMATCH's message: the expected header, and of the found first line (its
    names, trimmed; of a line over HEADER_MAX_BYTES, its first names and `line_bytes`) only
    what cannot be student data (see above)."""
    expected = ",".join(HEADER)
    must = f"The file must start with the template header: {expected}"
    n = len(found)
    if not any(f.strip() for f in found) and line_bytes is None:
        return f"The first line is empty. {must}"
    examined = found[:_EXAMINED_NAMES]
    recognised = [_name_like(f) and _close_to_a_template_name(f) for f in examined]
    size = (
        f"It is {line_bytes} bytes long (the template's header: {len(expected)} bytes)"
        if line_bytes is not None
        else f"It has {n} {'value' if n == 1 else 'values'}"
    )
    if not (sum(recognised) >= 3 or (any(recognised) and sum(recognised) * 2 >= len(examined))):
        looks_like_a_row = n == len(HEADER) or any(
            _GRADE.fullmatch(f) or _STATUS.fullmatch(f) or "@" in f or any(c.isdigit() for c in f)
            for f in examined
        )
        return (
            "The first line is not the template header: "
            + (
                "it looks like a student row (was the header line left out of the export?)"
                if looks_like_a_row
                else "its values are not column names"
            )
            + f". {size}; none is shown here, as a student row may hold a password. {must}"
        )
    plain = not any("@" in f or any(c.isdigit() for c in f) for f in examined)
    secret_at = {7, n - 4}  # where a shifted row's Password would be
    shown = [
        visible(f, _SHOWN_NAME_CHARS)
        if ok or (plain and i not in secret_at and _name_like(f))
        else _NOT_SHOWN
        for i, (f, ok) in enumerate(zip(examined, recognised, strict=True))
    ]
    found_text = f"Found ({n} names)" if line_bytes is None else "Found (its first names)"
    message = (
        f"The header does not match the template. Expected: {expected} | {found_text}: "
        + _capped(shown, HEADER_ECHO_LIMIT, more=n - len(shown))
    )
    if line_bytes is not None:
        return f"{message} | {size}."
    missing = [h for h in HEADER if h not in set(found)]
    if missing:
        message += f" | Missing or misspelt: {', '.join(missing)}"
        keys = {_name_key(f) for f in examined if _name_like(f)}
        if any(_name_key(h) in keys for h in missing):
            message += " (names must match the template exactly, letter case included)"
    if _NOT_SHOWN in shown:
        message += f" | {_NOT_SHOWN}: a value that is not a column name (it may be student data)"
    return message


def _capped(names: list[str], limit: int, more: int) -> str:
    """The names joined by commas, up to about `limit` characters."""
    out, size = [], 0
    for name in names:
        if out and size + len(name) + 1 > limit:
            break
        out.append(name)
        size += len(name) + 1
    rest = more + len(names) - len(out)
    return ",".join(out) + (f",… ({rest} more)" if rest > 0 else "")


def _parse_with_arrow(
    body: bytes | pa.Buffer, expected_rows: int, quoted_newlines: bool
) -> pa.Table | None:
    """pyarrow's parser; it splits the file in parallel blocks when no quoted field holds
    a line break (the usual case), which it can only do when told so."""
    try:
        table = pacsv.read_csv(
            pa.BufferReader(body),
            read_options=pacsv.ReadOptions(column_names=list(COLUMNS), block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=quoted_newlines,
                ignore_empty_lines=True,
                invalid_row_handler=lambda _row: "skip",
            ),
            convert_options=pacsv.ConvertOptions(
                # read_upload checked the whole file as UTF-8 (_check_text), and a value is
                # cut from it at ASCII bytes only (delimiters, quotes, line ends): each
                # value is UTF-8 and pyarrow need not check it again
                check_utf8=False,
                # pandas keeps text as large_string: a `string` column would be cast to it
                # (new offsets and data for every column, mostly on fresh pages)
                column_types={c: pa.large_string() for c in COLUMNS},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != expected_rows:
        return None
    return table


def _to_frame(table: pa.Table, ascii_only: bool) -> pd.DataFrame:
    """Trim every value; an empty value is absent (NA), and so is a value made only of
    zero-width characters (U+200B, U+FEFF...), which would look empty to the district.

    A column where no value starts or ends with ASCII whitespace or a non-ASCII character
    (the usual column) has nothing to trim and no such value: it is kept as it is."""
    columns = {}
    for name in COLUMNS:
        trimmed = table.column(name)
        if _has_edge_byte(trimmed, _MAY_TRIM):
            if ascii_only:  # the same characters as utf8_trim_whitespace's, a faster kernel
                trimmed = pc.ascii_trim(trimmed, characters=_ASCII_WHITESPACE)
            else:
                trimmed = pc.utf8_trim_whitespace(trimmed)
        empty = pc.equal(pc.binary_length(trimmed), 0)
        if not ascii_only and _has_edge_byte(trimmed, _MAY_TRIM):
            bare = pc.utf8_trim(trimmed, characters=_SPACES_AND_ZERO_WIDTH)
            empty = pc.or_(empty, pc.equal(bare, ""))
        if pc.any(empty).as_py() or trimmed.null_count:
            trimmed = pc.if_else(empty, pa.scalar(None, trimmed.type), trimmed)
        columns[name] = trimmed
    return pa.table(columns).to_pandas()


# a first or last byte of a value that may be trimmed: ASCII whitespace or a byte of a
# non-ASCII character (a lead byte first, a continuation byte last)
_MAY_TRIM = np.zeros(256, dtype=bool)
_MAY_TRIM[[ord(c) for c in _ASCII_WHITESPACE]] = True
_MAY_TRIM[0x80:] = True


_OFFSET_TYPES = {pa.string(): np.int32, pa.large_string(): np.int64}


def _has_edge_byte(column: pa.ChunkedArray, table: np.ndarray) -> bool:
    """Whether a value of the (string) column starts or ends with a byte `table` marks;
    numpy on the arrow buffers, a missing value included."""
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        if chunk.type not in _OFFSET_TYPES:
            return True  # not a layout read here: let the kernel decide
        _, offsets, data = chunk.buffers()
        offsets = np.frombuffer(offsets, dtype=_OFFSET_TYPES[chunk.type])[
            chunk.offset : chunk.offset + len(chunk) + 1
        ]
        if data is None or offsets[-1] == offsets[0]:
            continue
        data = np.frombuffer(data, dtype=np.uint8)
        # the first and the last byte of every value (of a neighbour for an empty one,
        # which can only say true wrongly: the kernel then trims nothing)
        last = len(data) - 1
        first_bytes = data[np.minimum(offsets[:-1], last)]
        last_bytes = data[np.maximum(offsets[1:] - 1, 0)]
        if table[first_bytes].any() or table[last_bytes].any():
            return True
    return False


def _malformed_errors(
    rows_idx: np.ndarray,
    lines: np.ndarray,
    end_lines: np.ndarray,
    field_counts: np.ndarray,
    records: list[list[str]],
    before_fields: np.ndarray,
    before_end_lines: np.ndarray,
) -> pd.DataFrame:
    """WRONG_FIELD_COUNT for each malformed record (with NAMED_STUDENT_ID). No message
    quotes a field: which field holds the password is unknown once the fields are
    miscounted. The Student ID column shows the record's second field only when the
    record can only be the start of a row: the record before it (or the header) has all
    the template's fields. After a short record it may be the rest of a row that a line
    break inside a value split in two, and starting at the Username its second field is
    the Password (see README, Security)."""
    if len(rows_idx) == 0:
        return empty_errors()
    starts_a_row = before_fields >= EXPECTED_FIELD_COUNT
    named = [
        sid if len(f) > 1 and _STUDENT_ID.fullmatch(sid := f[1].strip()) else "" for f in records
    ]
    student_ids = np.where(starts_a_row, named, "")
    messages = []
    for n, start, end, whole, before_end in zip(
        field_counts, lines, end_lines, starts_a_row, before_end_lines, strict=True
    ):
        message = f"The row has {n} fields; the template has {EXPECTED_FIELD_COUNT}."
        if end > start:
            message += f" It runs from line {start} to line {end}: is a quote not closed?"
        if not whole and before_end == start - 1:
            message += (
                f" The row ending on line {before_end} is short: did a line break inside a"
                " value split one row in two?"
            )
        messages.append(message)
    errors = error_frame(
        rows_idx, lines, student_ids, "", ErrorCode.WRONG_FIELD_COUNT.value, messages
    )
    # the student the record names as far as the full roster goes, shown or not: one that
    # is named is never deactivated as absent (core.plan.with_missing)
    errors[NAMED_STUDENT_ID] = pd.Series(named, dtype="str")
    return errors


def _csv_records(text: str) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of every record, header and blank lines included
    (a blank line has no fields), by the csv module.

    Lines end at LF only (a file with CR line ends was converted before). A CR that does
    not end a line would make the csv module stop ("new-line character seen in unquoted
    field"), so it is parsed as a NUL (never in an accepted file) and restored in the
    values. A csv.Error that still escaped would become a FILE_ENCODING rejection."""
    cr_marker = "\r" in text
    if cr_marker:
        text = _BARE_CR.sub("\x00", text)
    _allow_fields_of(len(text))
    reader = csv.reader(io.StringIO(text, newline="\n"), strict=False)
    consumed = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # pragma: no cover - no input is known to get here
            raise FileRejected(
                ErrorCode.FILE_ENCODING,
                consumed + 1,
                f"The file cannot be read as CSV from line {consumed + 1} ({exc}). "
                "Export the file as CSV UTF-8.",
            ) from None
        first, consumed = consumed + 1, reader.line_num
        if cr_marker:
            fields = [f.replace("\x00", "\r") for f in fields]
        yield first, max(first, consumed), fields


def _read_with_csv_module(text: str) -> ParsedFile:
    """The slow, obviously-right path: the csv module over physical lines."""
    records = _csv_records(text)
    header = next(records, None)
    _check_header(header[2] if header else [])
    good: list[list[str]] = []
    good_rows, good_lines = [], []
    bad_rows, bad_lines, bad_ends, bad_counts, bad_fields = [], [], [], [], []
    before_counts, before_ends = [], []
    previous = (len(header[2]), header[1]) if header else (0, 1)  # fields, last line
    ordinal = 0
    last_first, last_fields = 0, 0
    for first, last, fields in records:
        if not fields:
            continue
        last_first, last_fields = first, len(fields)
        if len(fields) == EXPECTED_FIELD_COUNT:
            good.append(fields)
            good_rows.append(ordinal)
            good_lines.append(first)
        else:
            bad_rows.append(ordinal)
            bad_lines.append(first)
            bad_ends.append(last)
            bad_counts.append(len(fields))
            bad_fields.append(fields)
            before_counts.append(previous[0])
            before_ends.append(previous[1])
        previous = (len(fields), last)
        ordinal += 1
    if ordinal == 0:
        raise FileRejected(ErrorCode.FILE_EMPTY, 2, "The file has a header but no data rows.")
    if not text.endswith("\n"):
        # where the last record starts: back from the end over the lines it spans
        start = len(text)
        for _ in range(text.count("\n") - last_first + 2):
            start = text.rindex("\n", 0, start)
        tail = text[start + 1 :]
        if tail.strip(_PADDING.decode()):
            _check_last_record(last_first, last_fields, open_quote=_ends_in_quotes(tail))
    table = pa.table(
        {name: pa.array([r[i] for r in good], pa.large_string()) for i, name in enumerate(COLUMNS)}
    )
    rows = _to_frame(table, ascii_only=text.isascii())
    rows.insert(0, "line", np.asarray(good_lines, dtype=np.int64))
    rows.insert(0, "row", np.asarray(good_rows, dtype=np.int64))
    malformed = _malformed_errors(
        np.asarray(bad_rows),
        np.asarray(bad_lines),
        np.asarray(bad_ends),
        np.asarray(bad_counts),
        bad_fields,
        np.asarray(before_counts, dtype=np.int64),
        np.asarray(before_ends, dtype=np.int64),
    )
    return ParsedFile(
        rows=rows.set_index(rows["row"].rename(None)), malformed=malformed, total_rows=ordinal
    )


def count_data_records(data: bytes) -> int:
    """How many data records a file holds (non-empty records after the header), for the
    counts of a rejected file: the records `read_upload` would read. Works on bytes that
    are not valid UTF-8 (an undecodable byte counts as an ordinary character)."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    if not data or data.isspace():
        return 0
    data = _line_ends(data)
    records = _scan_if_unambiguous(data)
    if records is not None:
        return int((~records.blank[1:]).sum())
    try:
        every = _csv_records(data.decode("utf-8", errors="replace"))
        return sum(1 for i, (_, _, fields) in enumerate(every) if i and fields)
    except FileRejected:  # pragma: no cover - see _csv_records
        return 0
