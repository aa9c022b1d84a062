"""Engine bugs found by comparing it with the row-by-row reference (reference.py), one
focused test each, on a real PostgreSQL."""

from __future__ import annotations

import psycopg

from eams_pipeline_tests.builders import (
    assert_license_invariant,
    district_doc,
    existing_student,
    load,
    row,
    run,
    students,
    used,
)


def _codes(result: object) -> list[tuple[int, str, str]]:
    e = result.errors  # type: ignore[attr-defined]
    return list(zip(e["line"].tolist(), e["column"].tolist(), e["code"].tolist(), strict=True))


def test_too_long_student_id_gets_no_transition_errors(conn: psycopg.Connection) -> None:
    """README: STUDENT_NOT_FOUND and PASSWORD_REQUIRED only when the Student ID is valid;
    a 33-character ID of valid characters used to be decided as an absent student."""
    load(conn, district_doc())
    long_id = "S" * 33
    result = run(conn, [row(long_id, "D"), row(long_id + "X", "A", password="")])
    assert _codes(result) == [
        (2, "Student ID", "FIELD_TOO_LONG"),
        (3, "Student ID", "FIELD_TOO_LONG"),
    ]
    assert result.counts["errors"] == 2


def test_too_long_email_is_a_row_error(conn: psycopg.Connection) -> None:
    """A syntactically valid Email over 254 characters is FIELD_TOO_LONG; it used to pass
    validation and fail the whole upload on the database's length check."""
    load(conn, district_doc())
    email = "a" * 250 + "@b.org"
    result = run(conn, [row("S1", email=email), row("S2")])
    assert _codes(result) == [(2, "Email", "FIELD_TOO_LONG")]
    assert result.status == "partially_processed"
    assert set(students(conn)) == {"S2"}
    assert used(conn, "ENT-D1") == 1
    assert_license_invariant(conn)


def test_username_taken_is_reported_without_student_id(conn: psycopg.Connection) -> None:
    """A row without Student ID asking for a username another student holds gets
    USERNAME_TAKEN too (it used to be dropped from the lookup)."""
    load(conn, district_doc(existing=[existing_student("S1", username="alice")]))
    result = run(conn, [row("", username="ALICE")])
    assert _codes(result) == [
        (2, "Student ID", "REQUIRED_FIELD_MISSING"),
        (2, "Username", "USERNAME_TAKEN"),
    ]


def test_a_value_holding_the_fingerprint_separator_cannot_mask_a_change() -> None:
    import pandas as pd

    from eams_pipeline.core.fingerprints import data_fingerprint, password_fingerprint
    from eams_pipeline.core.template import DATA_COLUMNS

    base = dict.fromkeys(DATA_COLUMNS, "x")
    a = pd.DataFrame([{**base, "last_name": "a\x1fb", "first_name": "c"}], dtype="str")
    b = pd.DataFrame([{**base, "last_name": "a", "first_name": "b\x1fc"}], dtype="str")
    assert data_fingerprint(a)[0] != data_fingerprint(b)[0]
    plain = pd.DataFrame([base], dtype="str")
    assert data_fingerprint(plain)[0] == data_fingerprint(plain.copy())[0]
    ids, pw = pd.Series(["S1"], dtype="str"), pd.Series(["p\x1fw"], dtype="str")
    assert (
        password_fingerprint(ids, pw, "0123456789abcdef")[0]
        != password_fingerprint(
            pd.Series(["S1\x1fp"], dtype="str"), pd.Series(["w"], dtype="str"), "0123456789abcdef"
        )[0]
    )


def test_fingerprints_keep_the_values_stored_databases_hold() -> None:
    """`students.data_hash` and `password_fingerprint` are stored: a faster implementation
    must give the same numbers, or every student of every district would look changed on
    the next night. The values below were computed by the first implementation (str
    objects through pandas' SipHash)."""
    import pandas as pd

    from eams_pipeline.core.fingerprints import data_fingerprint, password_fingerprint

    rows = pd.DataFrame(
        {
            "school_code": ["S1", "S2", None],
            "student_id": ["A1", "B-2", "C.3"],
            "last_name": ["O'Brien", "Zoë", "a\x1fb"],
            "first_name": ["Ann", "José", None],
            "middle_name": [None, "Q", "x"],
            "grade": ["K", "12", "3"],
            "username": ["ann1", "jose@x", "c3c"],
            "email": [None, "j@x.org", None],
            "class_name": ["Room 1", "Ωmega", None],
        },
        dtype="str",
    )
    assert data_fingerprint(rows).tolist() == [
        6216746680883809959,
        4158584096130699320,
        -8656353996762284155,
    ]
    ids = pd.Series(["A1", "B-2", "C.3"], dtype="str")
    passwords = pd.Series(["secret1", "pässwörd", None], dtype="str")
    assert password_fingerprint(ids, passwords, "0123456789abcdef").tolist() == [
        -3863376096286794478,
        7152781117316691848,
        2331247913305120228,
    ]


def test_fingerprints_are_the_same_whatever_the_chunk_size(monkeypatch) -> None:
    """Rows are joined and hashed chunk by chunk; a chunk edge changes no value, and a
    separator in a late chunk escapes every row of the file, as it did when the whole file
    was one chunk."""
    import pandas as pd

    from eams_pipeline.core import fingerprints
    from eams_pipeline.core.template import DATA_COLUMNS

    values = [f"v{i}" for i in range(10)]
    frame = pd.DataFrame({c: values for c in DATA_COLUMNS}, dtype="str")
    frame.loc[4, "email"] = None
    frame.loc[1, "first_name"] = "a\\b"  # a backslash: changed by escaping, if escaped
    with_separator = frame.copy()
    with_separator.loc[9, "last_name"] = "a\x1fb"
    ids, passwords = frame["student_id"], frame["last_name"]
    whole = [
        fingerprints.data_fingerprint(frame).tolist(),
        fingerprints.data_fingerprint(with_separator).tolist(),
        fingerprints.password_fingerprint(ids, passwords, "0123456789abcdef").tolist(),
    ]
    # the separator on the last row escapes the backslash of the second row too
    assert whole[0][1] != whole[1][1] and whole[0][0] == whole[1][0]
    monkeypatch.setattr(fingerprints, "_CHUNK_ROWS", 3)
    assert [
        fingerprints.data_fingerprint(frame).tolist(),
        fingerprints.data_fingerprint(with_separator).tolist(),
        fingerprints.password_fingerprint(ids, passwords, "0123456789abcdef").tolist(),
    ] == whole


def test_the_districts_students_are_read_back_exactly(conn) -> None:
    """load_district_students sends numbers as binaries and flags in a byte: every value,
    a missing fingerprint and the status must come back as SQL has them, in one row
    order across the columns."""
    import pandas as pd

    from eams_pipeline.db.district_snapshot import load_district_students
    from eams_pipeline.db.districts import get_district
    from eams_pipeline_tests.builders import district_doc, existing_student, load

    load(
        conn,
        district_doc(
            existing=[
                existing_student("S1"),
                existing_student("S-2.x", status="deactivated", username="Mixed.Case@2"),
                existing_student("S3"),
            ]
        ),
        district_doc(code="D2", existing=[existing_student("OTHER", order="ENT-D2")]),
    )
    conn.execute(
        "UPDATE students SET password_fingerprint = -9223372036854775807 WHERE student_id = 'S3'"
    )
    district = get_district(conn, "D1")
    got = load_district_students(conn, district).sort_values("student_pk")
    expected = conn.execute(
        "SELECT student_id, student_pk, status, order_id, school_id, data_hash, "
        "password_fingerprint, lower(username) FROM students WHERE district_id = %s "
        "ORDER BY student_pk",
        (district.district_id,),
    ).fetchall()
    assert len(got) == 3
    assert got["password_fingerprint"].isna().tolist() == [True, True, False]
    rows = [
        tuple(None if pd.isna(v) else (int(v) if not isinstance(v, str) else v) for v in r)
        for r in got.itertuples(index=False)
    ]
    assert rows == expected
    assert got["status"].tolist().count("deactivated") == 1
