"""How the apply writes a night's changes (db/apply.py): the physical choices that keep
the database's own checks cheap, with the stored content unchanged."""

from __future__ import annotations

import psycopg

from eams_pipeline_tests.builders import district_doc, existing_student, load, row, run


def test_new_students_are_keyed_in_username_order(conn: psycopg.Connection) -> None:
    # the new students' keys ascend in the order of the username index (lower(username)),
    # whatever the file order: the heap, the primary key and the username index are then
    # written one page after the other, and the history's key check reads them in order
    load(conn, district_doc(existing=[existing_student("E1", username="mid.user")]))
    rows = [
        row("N1", username="zed.last"),
        row("N2", username="Adam.First"),
        row("N3", username="bob.second"),
        row("N4", username="Carl.third"),
    ]
    result = run(conn, rows)
    assert result.counts["added"] == 4
    got = conn.execute(
        """SELECT s.student_id, s.student_pk, h.line_number
           FROM students s JOIN student_history h USING (student_pk)
           WHERE s.student_id <> 'E1' ORDER BY s.student_pk"""
    ).fetchall()
    assert [r[0] for r in got] == ["N2", "N3", "N4", "N1"]
    # the file's order is what the history records, as before
    assert {r[0]: r[2] for r in got} == {"N1": 2, "N2": 3, "N3": 4, "N4": 5}
    (existing_pk,) = conn.execute(
        "SELECT student_pk FROM students WHERE student_id = 'E1'"
    ).fetchone()
    assert all(pk > existing_pk for _, pk, _ in got)
