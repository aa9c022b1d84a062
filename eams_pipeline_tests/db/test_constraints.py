"""The rules that must never break are constraints in the database: bypass Python and try."""

from __future__ import annotations

import psycopg
import pytest

from eams_pipeline_tests.builders import district_doc, existing_student, load


@pytest.fixture
def district(conn):
    load(conn, district_doc(licenses=2, existing=[existing_student("E1")]))
    load(conn, district_doc(code="D2", existing=[existing_student("F1", order="ENT-D2")]))
    return conn


def _insert_student(conn, district: str, student_id: str, username: str) -> None:
    conn.execute(
        """INSERT INTO students (district_id, student_id, school_id, last_name, first_name,
               grade, username, status, order_id, data_hash)
           SELECT d.district_id, %s, s.school_id, 'L', 'F', '5', %s, 'deactivated',
                  d.enterprise_order_id, 0
           FROM districts d JOIN schools s ON s.district_id = d.district_id AND s.code = '101'
           WHERE d.code = %s""",
        (student_id, username, district),
    )


def _violates(conn, constraint_kind: type[Exception], sql: str, params: tuple = ()) -> None:
    with pytest.raises(constraint_kind), conn.transaction():
        conn.execute(sql, params)


def test_used_never_exceeds_the_order_size(district) -> None:
    _violates(
        district,
        psycopg.errors.CheckViolation,
        "UPDATE orders SET used = size + 1 WHERE number = 'ENT-D1'",
    )


def test_used_never_goes_below_zero(district) -> None:
    _violates(
        district,
        psycopg.errors.CheckViolation,
        "UPDATE orders SET used = -1 WHERE number = 'REG-D1'",
    )


def test_student_id_is_unique_within_a_district(district) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation), district.transaction():
        _insert_student(district, "D1", "E1", "fresh-name")


def test_the_same_student_id_in_another_district_is_fine(district) -> None:
    with district.transaction():
        _insert_student(district, "D2", "E1", "fresh-name")
    n = district.execute("SELECT count(*) FROM students WHERE student_id = 'E1'").fetchone()[0]
    assert n == 2


def test_username_is_unique_across_districts_case_insensitively(district) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation), district.transaction():
        _insert_student(district, "D2", "F2", "USERE1")


def test_a_student_cannot_sit_on_another_districts_order(district) -> None:
    _violates(
        district,
        psycopg.errors.ForeignKeyViolation,
        """UPDATE students SET order_id = (SELECT order_id FROM orders WHERE number = 'ENT-D2')
           WHERE student_id = 'E1'""",
    )


def test_a_student_cannot_sit_in_another_districts_school(district) -> None:
    _violates(
        district,
        psycopg.errors.ForeignKeyViolation,
        """INSERT INTO students (district_id, student_id, school_id, last_name, first_name,
               grade, username, status, order_id, data_hash)
           SELECT d.district_id, 'E9', s.school_id, 'L', 'F', '5', 'fresh-e9', 'deactivated',
                  d.enterprise_order_id, 0
           FROM districts d, schools s JOIN districts d2 ON d2.district_id = s.district_id
           WHERE d.code = 'D1' AND d2.code = 'D2' AND s.code = '101'""",
    )


def test_the_key_checks_name_what_is_missing_school_first(district) -> None:
    move = """UPDATE students SET {} WHERE student_id = 'E1'"""
    order = "order_id = (SELECT order_id FROM orders WHERE number = 'ENT-D2')"
    school = """school_id = (SELECT s.school_id FROM schools s JOIN districts d USING
                 (district_id) WHERE d.code = 'D2' AND s.code = '101')"""
    missing = psycopg.errors.ForeignKeyViolation
    with pytest.raises(missing, match="is not an order of the"), district.transaction():
        district.execute(move.format(order))
    with pytest.raises(missing, match="is not a school of the"), district.transaction():
        district.execute(move.format(f"{order}, {school}"))


def test_a_school_named_by_a_student_cannot_be_deleted(district) -> None:
    _violates(
        district,
        psycopg.errors.ForeignKeyViolation,
        """DELETE FROM schools WHERE school_id =
               (SELECT school_id FROM students WHERE student_id = 'E1' LIMIT 1)""",
    )


def _new_upload(conn: psycopg.Connection, district_id: int) -> int:
    """An upload row of the district (key K1) for history rows to name."""
    return conn.execute(
        """INSERT INTO uploads (district_id, upload_key, file_name, received_at)
           VALUES (%s, 'K1', 'students.csv', now()) RETURNING upload_id""",
        (district_id,),
    ).fetchone()[0]


def test_history_keys_are_checked_and_cascade(district) -> None:
    did = district.execute("SELECT district_id FROM districts WHERE code = 'D1'").fetchone()[0]
    pk = district.execute(
        "SELECT student_pk FROM students WHERE student_id = 'E1' AND district_id = %s", (did,)
    ).fetchone()[0]
    upload_id = _new_upload(district, did)
    history = """INSERT INTO student_history (upload_id, student_pk, line_number, change,
                     status_after, order_after, school_after, data_changed)
                 SELECT %s, %s, 2, 'updated', 'active', order_id, school_id, true
                 FROM students WHERE student_pk = %s"""
    _violates(district, psycopg.errors.ForeignKeyViolation, history, (upload_id + 99, pk, pk))
    _violates(district, psycopg.errors.ForeignKeyViolation, history, (upload_id, pk + 99, pk))
    district.execute(history, (upload_id, pk, pk))
    count = "SELECT count(*) FROM student_history WHERE student_pk = %s"
    assert district.execute(count, (pk,)).fetchone()[0] == 1
    district.execute("DELETE FROM uploads WHERE upload_id = %s", (upload_id,))  # cascades
    assert district.execute(count, (pk,)).fetchone()[0] == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("grade", "13"),
        ("status", "gone"),
        ("student_id", "has space"),
        ("student_id", ""),
        ("student_id", "S" * 33),
        ("student_id", "S1\n"),
        ("student_id", "S\u00e91"),
        ("username", "ab"),
        ("username", "u" * 65),
        ("username", "user name"),
        ("username", "user\n"),
        ("password_hash", "plaintext-password"),
    ],
)
def test_column_rules_hold_in_the_database(district, column: str, value: str) -> None:
    _violates(
        district,
        psycopg.errors.CheckViolation,
        f"UPDATE students SET {column} = %s WHERE student_id = 'E1'",
        (value,),
    )


_ACCEPTED = [
    ("student_id", "S" * 32),
    ("student_id", "a.b_c-D9"),
    ("username", "u" * 64),
    ("username", "a@b"),
    ("username", "A.b_c-9@x"),
]


@pytest.mark.parametrize(("column", "value"), _ACCEPTED)
def test_column_rules_accept_the_longest_and_every_allowed_character(
    district, column: str, value: str
) -> None:
    with district.transaction():
        district.execute(f"UPDATE students SET {column} = %s WHERE student_id = 'E1'", (value,))
    found = district.execute(f"SELECT count(*) FROM students WHERE {column} = %s", (value,))
    assert found.fetchone()[0] == 1


def test_upload_counts_must_add_up(district) -> None:
    _violates(
        district,
        psycopg.errors.CheckViolation,
        """INSERT INTO uploads (district_id, upload_key, file_name, received_at, rows, added,
               activated, deactivated, updated, unchanged, errors)
           SELECT district_id, 'k', 'students.csv', now(), 5, 1, 1, 1, 1, 0, 0
           FROM districts WHERE code = 'D1'""",
    )


def test_history_student_key_is_checked_on_dense_and_sparse_keys(district) -> None:
    # sql/013 reads the students in one ordered pass when the written keys fill most of
    # their range (an onboarding's history), and probes them one by one otherwise: both
    # refuse a key that is not a student, and leave the session's planner settings as found
    did = district.execute("SELECT district_id FROM districts WHERE code = 'D1'").fetchone()[0]
    for i in range(2, 6):
        _insert_student(district, "D1", f"E{i}", f"user.e{i}")
    far = district.execute(
        """INSERT INTO students (student_pk, district_id, student_id, school_id, last_name,
               first_name, grade, username, status, order_id, data_hash)
           OVERRIDING SYSTEM VALUE
           SELECT 1000000, district_id, 'FAR', school_id, 'L', 'F', '5', 'user.far',
                  'deactivated', order_id, 0
           FROM students WHERE student_id = 'E1' AND district_id = %s
           RETURNING student_pk""",
        (did,),
    ).fetchone()[0]
    pks = [
        r[0]
        for r in district.execute(
            "SELECT student_pk FROM students WHERE student_pk < %s ORDER BY student_pk", (far,)
        )
    ]
    assert len(pks) == 6 and pks[-1] - pks[0] == 5  # one block of keys
    upload_id = _new_upload(district, did)
    history = """INSERT INTO student_history (upload_id, student_pk, line_number, change,
                     status_after, order_after, school_after, data_changed)
                 SELECT %s, k, 2, 'added', 'active', 1, 1, true FROM unnest(%s::bigint[]) k"""
    district.execute("SET enable_hashjoin = off")
    district.execute("SET enable_mergejoin = off")  # as db/apply.py's UPDATE sets it
    dense_missing = [*pks[:-1], pks[-1] + 1]  # 6 keys over a range of 7: the ordered pass
    sparse_missing = [pks[0], far + 1]  # 2 keys over a range of ~1M: the probes
    for keys in (dense_missing, sparse_missing):
        with (
            pytest.raises(psycopg.errors.ForeignKeyViolation, match="is not a student"),
            district.transaction(),
        ):
            district.execute(history, (upload_id, keys))
    district.execute(history, (upload_id, pks))
    district.execute("DELETE FROM student_history WHERE upload_id = %s", (upload_id,))
    district.execute(history, (upload_id, [pks[0], far]))
    settings = district.execute(
        "SELECT current_setting('enable_nestloop'), current_setting('enable_hashjoin'), "
        "current_setting('enable_mergejoin')"
    ).fetchone()
    assert settings == ("on", "off", "off")
    count = "SELECT count(*) FROM student_history WHERE upload_id = %s"
    assert district.execute(count, (upload_id,)).fetchone()[0] == 2
