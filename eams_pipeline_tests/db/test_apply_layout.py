"""How the apply writes a night's changes (db/apply.py): the physical choices that keep
the database's own checks cheap, with the stored content unchanged."""

from __future__ import annotations

import psycopg
import pytest

from eams_pipeline.db import apply as db_apply
from eams_pipeline.services.process import Upload, prepare_upload, process_upload
from eams_pipeline_tests import builders
from eams_pipeline_tests.builders import (
    csv_bytes,
    district_doc,
    existing_student,
    load,
    row,
    run,
)


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


def test_the_apply_removes_exactly_the_cached_hashes_it_stored(conn: psycopg.Connection) -> None:
    # the cache rows of the passwords this apply stored go (a new student's, a changed
    # password's); the others stay until they expire: a stored student's other password,
    # a student the file does not name, the same Student ID in another district
    load(
        conn,
        district_doc(existing=[existing_student("E1"), existing_student("E2")]),
        district_doc(code="D2", existing=[existing_student("X1", order="ENT-D2")]),
    )
    conn.commit()
    rows = [row("N1", password="new-one-pass"), row("E1", password="changed-pass")]
    prepare_upload(conn, Upload("D1", csv_bytes(rows), key="D1-k"), builders.test_engine())
    cached = conn.execute(
        "SELECT district_id, student_id, password_fingerprint, password_hash "
        "FROM password_hash_cache ORDER BY student_id"
    ).fetchall()
    assert [r[1] for r in cached] == ["E1", "N1"]
    d1, _, fp, hashed = cached[0]
    (d2,) = conn.execute("SELECT district_id FROM districts WHERE code = 'D2'").fetchone()
    conn.execute(
        """INSERT INTO password_hash_cache
               (district_id, student_id, password_fingerprint, password_hash)
           VALUES (%(d1)s, 'E1', %(other)s, %(h)s), (%(d1)s, 'E2', %(fp)s, %(h)s),
                  (%(d1)s, 'GONE', %(fp)s, %(h)s), (%(d2)s, 'E1', %(fp)s, %(h)s)""",
        {"d1": d1, "d2": d2, "fp": fp, "other": fp + 1, "h": hashed},
    )
    conn.commit()
    result = process_upload(conn, Upload("D1", csv_bytes(rows), key="D1-k"), builders.test_engine())
    assert result.counts["added"] == 1 and result.counts["updated"] == 1
    left = conn.execute(
        "SELECT district_id, student_id, password_fingerprint FROM password_hash_cache"
    ).fetchall()
    assert sorted(left) == sorted(
        [(d1, "E1", fp + 1), (d1, "E2", fp), (d1, "GONE", fp), (d2, "E1", fp)]
    )


@pytest.mark.parametrize("ahead", [True, False])
def test_new_students_made_ahead_or_streamed_are_written_the_same(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, ahead: bool
) -> None:
    # on a night with changed and new students, the new students' rows are made on a
    # thread while the UPDATE runs (encode_ahead); past AHEAD_MAX_ROWS they stream as
    # they are made: the same rows land either way, after the UPDATE
    load(conn, district_doc(existing=[existing_student("E1"), existing_student("E2")]))
    if not ahead:
        monkeypatch.setattr(db_apply, "AHEAD_MAX_ROWS", 1)
    made: list[db_apply.Ahead] = []
    encode_ahead = db_apply.encode_ahead
    monkeypatch.setattr(
        db_apply, "encode_ahead", lambda *a: made.append(encode_ahead(*a)) or made[-1]
    )
    rows = [
        row("N1", username="new.one", last_name="First"),
        row("E1", last_name="Renamed"),
        row("N2", "X", username="new.two", last_name="Second"),
    ]
    result = run(conn, rows)
    assert (result.counts["added"], result.counts["updated"]) == (2, 1)
    assert [m.students is not None for m in made] == [ahead]
    got = conn.execute(
        """SELECT s.student_id, s.last_name, s.username, s.status, h.change, h.line_number,
                  h.last_name_after
           FROM students s JOIN student_history h USING (student_pk)
           ORDER BY s.student_id"""
    ).fetchall()
    assert got == [
        ("E1", "Renamed", "userE1", "active", "updated", 3, "Renamed"),
        ("N1", "First", "new.one", "active", "added", 2, "First"),
        ("N2", "Second", "new.two", "deactivated", "added", 4, "Second"),
    ]


def test_a_username_released_by_a_rename_is_not_given_to_a_new_student_the_same_night(
    conn: psycopg.Connection,
) -> None:
    # what lets the apply update the changed students before it inserts the new ones: a
    # stored student's username stays taken for the whole file, even when that student is
    # renamed in it, so neither write can collide with the other whatever their order
    load(conn, district_doc(existing=[existing_student("E1", username="old.name")]))
    result = run(conn, [row("E1", username="new.name"), row("N1", username="old.name")])
    assert (result.counts["updated"], result.counts["added"]) == (1, 0)
    assert result.error_codes == {"USERNAME_TAKEN": 1}
    assert conn.execute("SELECT student_id, username FROM students").fetchall() == [
        ("E1", "new.name")
    ]
