"""What a change report must say, derived independently from student_history (the tests'
oracle for core.change_file's rules: one line per changed field, Status first, a password
only ever "changed", the absent students of a full roster last)."""

from __future__ import annotations

import csv
import io

import psycopg

from eams_pipeline.core.error_file import neutralise_cell

_DATA = (
    ("last_name", "Last Name"),
    ("first_name", "First Name"),
    ("middle_name", "Middle Name"),
    ("grade", "Grade"),
    ("username", "Username"),
)
_DATA_AFTER_PASSWORD = (("email", "Email"), ("class_name", "Class Name"))


def read_report(content: bytes) -> list[list[str]]:
    """A published report's lines, header first (it must be UTF-8 CSV with CRLF)."""
    text = content.decode("utf-8")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    return list(csv.reader(io.StringIO(text, newline="")))


def expected_lines(conn: psycopg.Connection, upload_key: str, *, revert: bool = False) -> list:
    """The report's lines (header first) as student_history says they must be."""
    columns = ", ".join(f"h.{c}_before, h.{c}_after" for c, _ in _DATA + _DATA_AFTER_PASSWORD)
    rows = conn.execute(
        f"""SELECT h.line_number, s.student_id, h.status_before, h.status_after,
                   sb.code, sa.code, ob.number, oa.number, h.password_changed, {columns}
            FROM student_history h JOIN uploads u ON u.upload_id = h.upload_id
            JOIN students s ON s.student_pk = h.student_pk
            LEFT JOIN schools sb ON sb.school_id = h.school_before
            JOIN schools sa ON sa.school_id = h.school_after
            LEFT JOIN orders ob ON ob.order_id = h.order_before
            JOIN orders oa ON oa.order_id = h.order_after
            WHERE u.upload_key = %s""",
        (upload_key,),
    ).fetchall()
    out = []
    for r in rows:
        line, sid, st_b, st_a, sc_b, sc_a, or_b, or_a, password = r[:9]
        data = dict(
            zip(
                [f"{c}_{w}" for c, _ in _DATA + _DATA_AFTER_PASSWORD for w in ("b", "a")],
                r[9:],
                strict=True,
            )
        )
        created = st_b is None

        def pair(before: object, after: object) -> tuple:
            return (after, before) if revert else (before, after)

        old, new = pair(st_b, st_a) if not (revert and created) else (st_a, "deactivated")
        lines = []
        if old != new:
            if old is None:
                change = "added"
            elif new == "active":
                change = "activated"
            elif line == 0 and not revert:
                change = "deactivated_missing"
            else:
                change = "deactivated"
            lines.append((change, "Status", old, new))
        if not created:
            fields = [("moved", "School Code", *pair(sc_b, sc_a))]
            fields += [("updated", f, *pair(data[f"{c}_b"], data[f"{c}_a"])) for c, f in _DATA]
            if password:
                fields.append(("updated", "Password", None, "changed"))
            fields += [
                ("updated", f, *pair(data[f"{c}_b"], data[f"{c}_a"]))
                for c, f in _DATA_AFTER_PASSWORD
            ]
            fields.append(("updated", "Order", *pair(or_b, or_a)))
            lines += [f for f in fields if f[2] != f[3]]
        for rank, (change, field, before, after) in enumerate(lines):
            key = (line == 0, line, sid, rank)
            cells = ["" if line == 0 else str(line), sid, change, field, before, after]
            out.append((key, [neutralise_cell(c or "") for c in cells]))
    header = ["Line Number", "Student ID", "Change", "Field", "Before", "After"]
    return [header] + [cells for _, cells in sorted(out, key=lambda o: o[0])]
