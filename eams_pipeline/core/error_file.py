"""The error file of SPEC §5: UTF-8, one line per error, in file order, formula-safe.

Cells are neutralised by defusedcsv (the OWASP set = + - @ | %); this module adds the two
leading characters SPEC §5 names that defusedcsv lets through: tab and carriage return,
and a leading - or + on a number-like text (a Student ID may be `-123`).
"""

from __future__ import annotations

import io

import pandas as pd
from defusedcsv import csv as safe_csv
from defusedcsv.csv import _escape as _defused_cell

HEADER = ("Line Number", "Student ID", "Column", "Error Code", "Message")
_ALWAYS_NEUTRALISE = ("\t", "\r", "-", "+")


# every leading character either rule acts on (defusedcsv's: = + - @ | %): a cell starting
# with none of them is never changed (the change report neutralises only the cells that do)
RISKY_LEADING = frozenset("=+-@|%\t\r")


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_ALWAYS_NEUTRALISE):
        return "'" + value
    return value


def neutralise_cell(value: str) -> str:
    """One text cell as the error file writes it: ours, then defusedcsv's rule."""
    return _defused_cell(_cell(value))


def render_error_file(errors: pd.DataFrame) -> bytes:
    """The error file as bytes, from an error frame (line, student_id, column, code, message)."""
    out = io.StringIO(newline="")
    writer = safe_csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    records = zip(
        errors["line"].astype("int64").tolist(),
        errors["student_id"].fillna("").astype(str).tolist(),
        errors["column"].fillna("").astype(str).tolist(),
        errors["code"].astype(str).tolist(),
        errors["message"].astype(str).tolist(),
        strict=True,
    )
    writer.writerows(
        (line, _cell(sid), _cell(col), code, _cell(msg)) for line, sid, col, code, msg in records
    )
    return out.getvalue().encode("utf-8")
