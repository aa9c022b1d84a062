"""Bytes in, a DataFrame of text out: the file-level checks of SPEC §2.

Each data record keeps its ordinal (`row`, 0-based) and the physical line where it starts
(`line`, the header is line 1), so every later error names the line the district sees in
its editor, even when quoted fields span lines.

The fast path finds record boundaries with a vectorised quote-parity scan (numpy) and
parses with the pyarrow CSV reader. Its result is cross-checked against the scan; should
they ever disagree (stray quotes, bare CR line endings) the file is re-read with the
standard library's csv module, which is slower but defines the same records.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from eams_pipeline.core.errors import ErrorCode, empty_errors, error_frame
from eams_pipeline.core.template import COLUMNS, EXPECTED_FIELD_COUNT, HEADER

UTF8_BOM = b"\xef\xbb\xbf"
_QUOTE, _COMMA, _LF, _CR = ord('"'), ord(","), ord("\n"), ord("\r")


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
    _check_text(data)
    if not data.strip():
        raise FileRejected(ErrorCode.FILE_EMPTY, 1, "The file is empty.")
    records = _scan_records(data)
    _check_header(_record_text(data, records, 0))

    data_ids = np.flatnonzero(~records.blank[1:]) + 1
    if len(data_ids) == 0:
        raise FileRejected(ErrorCode.FILE_EMPTY, 2, "The file has a header but no data rows.")
    good = records.fields[data_ids] == EXPECTED_FIELD_COUNT
    body = data[records.starts[1] :]

    table = None
    if not force_fallback:
        table = _parse_with_arrow(body, int(good.sum()), records.quoted_newlines)
    if table is None:
        return _read_with_csv_module(body)

    rows = _to_frame(table)
    rows.insert(0, "line", records.lines[data_ids[good]])
    rows.insert(0, "row", np.flatnonzero(good))
    bad_ids = data_ids[~good]
    malformed = _malformed_errors(
        rows_idx=np.flatnonzero(~good),
        lines=records.lines[bad_ids],
        field_counts=records.fields[bad_ids],
        texts=[_record_text(data, records, int(i)) for i in bad_ids],
    )
    return ParsedFile(
        rows=rows.set_index(rows["row"].rename(None)), malformed=malformed, total_rows=len(data_ids)
    )


def _check_text(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
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


@dataclass(frozen=True)
class _Records:
    starts: np.ndarray  # byte offset where each record starts
    ends: np.ndarray  # byte offset just past each record's content (before CR LF / LF)
    lines: np.ndarray  # physical line where each record starts (1-based)
    fields: np.ndarray  # number of fields (unquoted commas + 1)
    blank: np.ndarray  # empty line
    quoted_newlines: bool  # a quoted field holds a line break somewhere in the file


def _scan_records(data: bytes) -> _Records:
    """Record boundaries of an RFC 4180 file: LFs outside quotes, found without a Python loop."""
    buf = np.frombuffer(data, dtype=np.uint8)
    # only quotes, commas and LFs matter: the quote parity (inside quotes or not) is a
    # running count over those bytes alone; uint8 wraps at 256, which keeps the parity
    at = np.flatnonzero((buf == _QUOTE) | (buf == _COMMA) | (buf == _LF))
    byte = buf[at]
    outside = (np.cumsum(byte == _QUOTE, dtype=np.uint8) & 1) == 0
    is_lf = byte == _LF
    newlines = at[is_lf]
    terminators = at[is_lf & outside]
    starts = np.concatenate(([0], terminators + 1))
    ends = np.concatenate((terminators, [len(buf)]))
    if starts[-1] >= len(buf):  # the file ends with a newline: no record after it
        starts, ends = starts[:-1], ends[:-1]
    # strip the CR of a CRLF ending
    has_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == _CR)
    ends = ends - has_cr
    lines = np.searchsorted(newlines, starts) + 1
    commas = at[(byte == _COMMA) & outside]
    # commas of record i: those between its start and its end (both arrays are sorted)
    fields = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    return _Records(
        starts=starts,
        ends=ends,
        lines=lines,
        fields=fields,
        blank=ends == starts,
        quoted_newlines=len(terminators) < len(newlines),
    )


def _record_text(data: bytes, records: _Records, i: int) -> str:
    return data[records.starts[i] : records.ends[i]].decode("utf-8")


def _check_header(text: str) -> None:
    found = next(csv.reader([text]), [])
    names = tuple(name.strip() for name in found)
    if names != HEADER:
        raise FileRejected(
            ErrorCode.HEADER_MISMATCH,
            1,
            "The header does not match the template. Expected: "
            f"{','.join(HEADER)} | Found: {','.join(names)}",
        )


def _parse_with_arrow(body: bytes, expected_rows: int, quoted_newlines: bool) -> pa.Table | None:
    """pyarrow's parser; it splits the file in parallel blocks when no quoted field holds
    a line break (the usual case), which it can only do when told so."""
    skipped = 0

    def on_invalid_row(_row: object) -> str:
        nonlocal skipped
        skipped += 1
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(column_names=list(COLUMNS), block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=quoted_newlines,
                ignore_empty_lines=True,
                invalid_row_handler=on_invalid_row,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in COLUMNS},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid:
        return None
    if table.num_rows != expected_rows:
        return None
    return table


def _to_frame(table: pa.Table) -> pd.DataFrame:
    """Trim every value; an empty value is absent (NA)."""
    columns = {}
    for name in COLUMNS:
        trimmed = pc.utf8_trim_whitespace(table.column(name))
        columns[name] = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    return pa.table(columns).to_pandas()


def _malformed_errors(
    rows_idx: np.ndarray, lines: np.ndarray, field_counts: np.ndarray, texts: list[str]
) -> pd.DataFrame:
    if len(rows_idx) == 0:
        return empty_errors()
    student_ids = []
    for text in texts:
        fields = next(csv.reader([text]), [])
        student_ids.append(fields[1].strip() if len(fields) > 1 else "")
    messages = [
        f"The row has {n} fields; the template has {EXPECTED_FIELD_COUNT}." for n in field_counts
    ]
    return error_frame(
        rows_idx, lines, student_ids, "", ErrorCode.WRONG_FIELD_COUNT.value, messages
    )


def _line_breaks(value: str) -> int:
    return value.count("\n") + value.count("\r") - value.count("\r\n")


def _read_with_csv_module(body: bytes) -> ParsedFile:
    """The slow, obviously-right path: the csv module, which counts physical lines itself."""
    reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""))
    good: list[list[str]] = []
    good_rows, good_lines = [], []
    bad_rows, bad_lines, bad_counts, bad_texts = [], [], [], []
    ordinal = 0
    for fields in reader:
        if not fields:
            continue
        # the reader skips blank lines silently: count back from where this record ends
        # (line_num counts from the body's first line, which is the file's line 2)
        start = reader.line_num + 1 - sum(_line_breaks(f) for f in fields)
        if len(fields) == EXPECTED_FIELD_COUNT:
            good.append(fields)
            good_rows.append(ordinal)
            good_lines.append(start)
        else:
            bad_rows.append(ordinal)
            bad_lines.append(start)
            bad_counts.append(len(fields))
            bad_texts.append(",".join(fields))
        ordinal += 1
    if ordinal == 0:
        raise FileRejected(ErrorCode.FILE_EMPTY, 2, "The file has a header but no data rows.")
    table = pa.table(
        {name: pa.array([r[i] for r in good], pa.string()) for i, name in enumerate(COLUMNS)}
    )
    rows = _to_frame(table)
    rows.insert(0, "line", np.asarray(good_lines, dtype=np.int64))
    rows.insert(0, "row", np.asarray(good_rows, dtype=np.int64))
    malformed = _malformed_errors(
        np.asarray(bad_rows), np.asarray(bad_lines), np.asarray(bad_counts), bad_texts
    )
    return ParsedFile(
        rows=rows.set_index(rows["row"].rename(None)), malformed=malformed, total_rows=ordinal
    )


def count_data_records(data: bytes) -> int:
    """How many data records a file holds (non-empty records after the header), for the
    counts of a rejected file. Works on bytes that are not valid UTF-8."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    if not data.strip():
        return 0
    records = _scan_records(data)
    return int((~records.blank[1:]).sum())
