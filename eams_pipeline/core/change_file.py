"""The change report: what an applied upload (or its revert) changed, one line per changed
field of a student, published beside the error file (`reports/students_changes_<upload
key>.csv`, see core.names).

    Line Number,Student ID,Change,Field,Before,After

- Line Number: the upload's line of the student's row (header = line 1); empty for a
  student deactivated because it was absent from a full-roster file.
- Change says what the line is:
  `added` (a new student: one line, Field Status, Before empty, After its status),
  `activated` / `deactivated` (Field Status), `deactivated_missing` (Field Status: absent
  from a full-roster file), `moved` (Field School Code: the old and the new school), and
  `updated` (any other field: the template's data columns, Password, Order).
- A password is never shown: Field Password, Before empty, After `changed`.
- Lines are in the upload's line order (the students absent from the file last, by
  Student ID), a student's fields in FIELDS order. Cells are neutralised as the error
  file's (core.error_file).

A revert's report lists what the revert put back, Before being the upload's after-image;
a student the upload added gets one line when the revert deactivates it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa
import pyarrow.csv as pa_csv

from eams_pipeline.core.error_file import RISKY_LEADING, neutralise_cell

HEADER = ("Line Number", "Student ID", "Change", "Field", "Before", "After")


class Change(StrEnum):
    ADDED = "added"
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"
    DEACTIVATED_MISSING = "deactivated_missing"
    MOVED = "moved"
    UPDATED = "updated"


STATUS = "Status"
SCHOOL = "School Code"
PASSWORD = "Password"
ORDER = "Order"
# what a password's After says (its value, length or hash never appear)
PASSWORD_CHANGED = "changed"
# the template's data columns besides School Code and Password (students' column, Field)
DATA_FIELDS = (
    ("last_name", "Last Name"),
    ("first_name", "First Name"),
    ("middle_name", "Middle Name"),
    ("grade", "Grade"),
    ("username", "Username"),
    ("email", "Email"),
    ("class_name", "Class Name"),
)
# a student's lines in this order: Status, then the template's order, then Order
FIELDS = (
    STATUS,
    SCHOOL,
    *(f for _, f in DATA_FIELDS[:5]),
    PASSWORD,
    *(f for _, f in DATA_FIELDS[5:]),
    ORDER,
)


@dataclass(frozen=True)
class ChangeFile:
    content: bytes  # the file
    lines: int  # its lines but the header
    changes: dict[str, int]  # lines per Change (only those present), in Change's order


def render_change_file(lines: bytes) -> ChangeFile:
    """The change report (UTF-8, CRLF, the header first) from its lines as CSV without a
    header (the query's CSV output, db.change_history). Vectorised: only the cells that
    start with a character the error file's rule acts on go through that rule."""
    if not lines:
        return ChangeFile((",".join(HEADER) + "\r\n").encode("utf-8"), 0, {})
    table = pa_csv.read_csv(
        io.BytesIO(lines),
        read_options=pa_csv.ReadOptions(column_names=list(HEADER)),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in HEADER}, strings_can_be_null=False
        ),
    )
    frame = table.to_pandas()
    for name in HEADER:
        cells = frame[name]
        risky = cells.str[:1].isin(RISKY_LEADING).to_numpy(dtype=bool)
        if risky.any():
            frame.loc[risky, name] = cells[risky].map(neutralise_cell)
    counts = frame["Change"].value_counts()
    return ChangeFile(
        frame.to_csv(index=False, lineterminator="\r\n").encode("utf-8"),
        len(frame),
        {str(c): int(counts[c]) for c in Change if c in counts.index},
    )
