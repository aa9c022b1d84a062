"""Bulk copies between pandas frames and PostgreSQL: COPY ... TO STDOUT parsed by pyarrow,
and COPY ... FROM STDIN fed slice by slice with CSV written by pyarrow. The engine's reads,
the apply's staging tables, the password-hash cache and the benchmarks all go through here.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv


def copy_out(
    conn: psycopg.Connection, query: str, params: tuple, types: dict[str, pa.DataType]
) -> pd.DataFrame:
    """COPY a query's result out as CSV and parse it with pyarrow (fast for large results)."""
    buffer = io.BytesIO()
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT csv, HEADER true)", params) as cp:
        for chunk in cp:
            buffer.write(chunk)
    if buffer.tell() == 0:
        return pd.DataFrame({name: pd.Series(dtype=pandas_type(t)) for name, t in types.items()})
    buffer.seek(0)
    table = pacsv.read_csv(
        buffer,
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    # nullable integers stay exact (the default would go through float64)
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def pandas_type(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "Int64"
    if pa.types.is_boolean(t):
        return "bool"
    return "str"


COPY_IN_ROWS = 65_536  # rows converted and sent at a time: the CSV of 1M staged rows is ~0.5 GB


def copy_in(
    conn: psycopg.Connection,
    table: str,
    frame: pd.DataFrame,
    order: np.ndarray | None = None,
    *,
    encoded: Iterable[bytes] | None = None,
) -> None:
    """COPY a frame into a table (columns by name), as CSV written by pyarrow, slice by
    slice: memory holds one slice's Arrow table and CSV text, never the whole frame's.
    `order` (positions in `frame`) sends those rows, in that order, without a sorted or
    filtered copy of the frame. `encoded`: the same rows already made by encode_csv (the
    frame then only names the columns)."""
    if frame.empty:
        return
    columns = ", ".join(frame.columns)
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as cp:
        for chunk in encode_csv(frame, order) if encoded is None else encoded:
            cp.write(chunk)


def encode_csv(frame: pd.DataFrame, order: np.ndarray | None = None) -> Iterator[bytes]:
    """The rows of `frame` (those at `order`, in that order) as COPY's CSV, COPY_IN_ROWS at
    a time."""
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    for start in range(0, len(frame) if order is None else len(order), COPY_IN_ROWS):
        if order is None:
            part = frame.iloc[start : start + COPY_IN_ROWS]
        else:
            part = frame.iloc[order[start : start + COPY_IN_ROWS]]
        sink = io.BytesIO()
        pacsv.write_csv(pa.Table.from_pandas(part, preserve_index=False), sink, options)
        yield sink.getvalue()
