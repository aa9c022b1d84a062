"""The vectorised engine against the row-by-row reference (reference.py), on random
districts and random files, on a real PostgreSQL.

One database for the whole test: every example truncates the tables and loads its own
district D1 (and D2, whose student holds a username the file may ask for).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eams_pipeline import config
from eams_pipeline.core.outcome import UploadResult
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.services.process import Engine
from eams_pipeline_tests.builders import (
    assert_license_invariant,
    district_doc,
    existing_student,
    load,
    run,
    students,
)
from eams_reference import (
    HEADER,
    DistrictState,
    Order,
    ReferenceResult,
    School,
    Student,
    district_state_from_db,
    reference_process,
)

ENT, REG = "ENT-D1", "REG-D1"
NEW_IDS = [f"N{i}" for i in range(1, 31)]
OTHER_USERNAME = "Taken.Elsewhere"  # held by student O1 of district D2
ROTATED_KEY = b"5eed" * 16  # the secret key after a rotation

# valid values (before padding and quoting)
NAMES = ["Smith", "Smith", "O'Neil, Jr.", 'The "Rock"', "Multi\nLine", "Two\r\nLines", "Ünïcødé"]
GRADES = ["K", "k", "5", "05", "12"]
EMAILS = ["", "", "a@b.org", "A.B@x.example.com"]
CLASSES = ["", "", "Room 4"]
# a fault: a value that breaks a rule (or may, depending on the state)
FAULTS = {
    "School Code": ["900", "D1-HB", "999", "", "9" * 65],
    "Student ID": ["bad id", "S" * 33, "", "S/1", "   "],
    "Last Name": ["", "   ", "x" * 61],
    "Middle Name": ["y" * 61],
    "Grade": ["13", "0", "00", "x", ""],
    "Username": ["ab", "bad user", "u" * 65, "", "bad,name", OTHER_USERNAME, "TAKEN.elsewhere"],
    "Password": ["short", "p" * 65, ""],
    "Email": ["bad", "a@@b.org", "a@b", "a" * 250 + "@b.org"],
    "Class Name": ["c" * 101],
    "Status": ["Q", "AA", "", "A", "D", "X", "I", "x", "d"],
}


@dataclass(frozen=True)
class Existing:
    student_id: str
    status: str
    order: str
    school: str
    last_name: str
    middle_name: str | None
    grade: str
    username: str
    email: str | None
    class_name: str | None


@dataclass(frozen=True)
class Scenario:
    existing: tuple[Existing, ...]
    enterprise_size: int
    regular_size: int
    other_district: bool
    data: bytes


@st.composite
def existing_students(draw: st.DrawFn) -> tuple[Existing, ...]:
    n = draw(st.integers(0, 15))
    return tuple(
        Existing(
            student_id=f"S{i}",
            status=draw(st.sampled_from(["active", "deactivated"])),
            order=draw(st.sampled_from([ENT, REG])),
            school=draw(st.sampled_from(["101", "102", "101", "900"])),
            last_name=draw(st.sampled_from(["Smith", "Jones"])),
            middle_name=draw(st.sampled_from([None, "Q"])),
            grade=draw(st.sampled_from(["K", "5", "12"])),
            username=draw(st.sampled_from([f"user{i}", f"User{i}"])),
            email=draw(st.sampled_from([None, f"s{i}@school.org"])),
            class_name=draw(st.sampled_from([None, "Room 4"])),
        )
        for i in range(n)
    )


def _cell(draw: st.DrawFn, value: str) -> str:
    """Pad with spaces sometimes; quote when needed or at random (RFC 4180)."""
    if value and draw(st.integers(0, 5)) == 0:
        value = " " + value + "  "
    if any(c in value for c in ',"\n\r') or value.startswith(" ") or draw(st.booleans()):
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def row_values(
    draw: st.DrawFn, existing: tuple[Existing, ...], sid: str, faults: list[int]
) -> list[str]:
    """A valid row for `sid` (an existing student's stored data, or new data), with one
    or two faults at times."""
    by_id = {e.student_id: e for e in existing}
    e = by_id.get(sid)
    if e is not None and draw(st.booleans()):  # the stored data: unchanged unless faulted
        values = {
            "School Code": e.school,
            "Last Name": e.last_name,
            "Middle Name": e.middle_name or "",
            "Grade": e.grade
            if e.grade == "12"
            else draw(st.sampled_from([e.grade, e.grade.lower(), e.grade.zfill(2)])),
            "Email": e.email or "",
            "Class Name": e.class_name or "",
        }
    else:
        values = {
            "School Code": draw(st.sampled_from(["101", "102"])),
            "Last Name": draw(st.sampled_from(NAMES)),
            "Middle Name": draw(st.sampled_from(["", "", "Q"])),
            "Grade": draw(st.sampled_from(GRADES)),
            "Email": draw(st.sampled_from(EMAILS)),
            "Class Name": draw(st.sampled_from(CLASSES)),
        }
    if e is not None:
        username = e.username if draw(st.integers(0, 3)) else f"renamed.{sid}"
        status = draw(st.sampled_from(["A", "A", "I", "D", "a", "i", "d"]))
        password = draw(st.sampled_from(["", "", "secret1", "secret2"]))
    else:
        username, status = f"new.{sid}", draw(st.sampled_from(["A", "A", "a", "X", "x"]))
        password = draw(st.sampled_from(["secret1", "secret2"]))
    values.update(
        {
            "Student ID": sid,
            "First Name": "First",
            "Username": draw(st.sampled_from([username, username, username.upper()])),
            "Password": password,
            "Status": status,
        }
    )
    for _ in range(draw(st.sampled_from(faults))):
        column = draw(st.sampled_from(sorted(FAULTS)))
        pool = FAULTS[column]
        if column == "Username":  # another student's username, in any case
            pool = pool + [x.username.swapcase() for x in existing if x.student_id != sid]
        values[column] = draw(st.sampled_from(pool))
    return [values[h] for h in HEADER]


@st.composite
def upload_files(draw: st.DrawFn, existing: tuple[Existing, ...]) -> bytes:
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    header = list(HEADER)
    mode = draw(st.integers(0, 49))
    # how many faults a row gets: a clean file, a few bad rows, or many
    faults = draw(st.sampled_from([[0], [0] * 8 + [1, 2], [0, 0, 1, 1, 2]]))
    if mode == 0:
        header[1] = "Student Id"  # HEADER_MISMATCH
    elif mode == 1:
        header = [" " + h + " " for h in header]  # accepted: names are trimmed
    lines = [",".join(_cell(draw, h) if mode == 1 else h for h in header)]
    ids = draw(st.permutations([e.student_id for e in existing] + NEW_IDS))
    for i in range(draw(st.integers(5, 30)) if mode != 2 else 0):
        # mostly distinct Student IDs; now and then one already used (a duplicate)
        sid = ids[i % len(ids)] if draw(st.integers(0, 9)) else draw(st.sampled_from(ids))
        kind = draw(st.integers(0, 19))
        if kind == 0:
            lines.append(draw(st.sampled_from(["", "", "   "])))  # blank: no row; spaces: 1 field
        elif kind == 1:
            values = draw(row_values(existing, sid, faults))
            cut = draw(st.sampled_from([1, 2, 10, 12]))
            values = [*values, "extra"][:cut]
            lines.append(",".join(_cell(draw, v) for v in values))  # WRONG_FIELD_COUNT
        else:
            lines.append(",".join(_cell(draw, v) for v in draw(row_values(existing, sid, faults))))
    text = newline.join(lines) + (newline if draw(st.booleans()) else "")
    data = text.encode("utf-8")
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data
    if mode == 3:
        data = b""  # FILE_EMPTY
    elif mode == 4 and len(lines) > 2:
        data = data.replace(b"First", b"Fir\xffst", 1)  # FILE_ENCODING
    return data


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    existing = draw(existing_students())
    on = {o: sum(e.status == "active" and e.order == o for e in existing) for o in (ENT, REG)}
    return Scenario(
        existing=existing,
        enterprise_size=on[ENT] + draw(st.sampled_from([0, 1, 2, 3, 50, 50])),
        regular_size=on[REG] + draw(st.integers(0, 2)),
        other_district=draw(st.booleans()),
        data=draw(upload_files(existing)),
    )


# ---------------------------------------------------------------------------------------


def _setup(conn: psycopg.Connection, sc: Scenario) -> DistrictState:
    conn.execute(
        "TRUNCATE student_history, upload_errors, uploads, students, orders, schools, "
        "districts RESTART IDENTITY CASCADE"
    )
    docs = [
        district_doc(
            licenses=sc.enterprise_size,
            regular_licenses=sc.regular_size,
            existing=[
                existing_student(
                    e.student_id,
                    status=e.status,
                    order=e.order,
                    school=e.school,
                    last_name=e.last_name,
                    first_name="First",
                    middle_name=e.middle_name,
                    grade=e.grade,
                    username=e.username,
                    email=e.email,
                    class_name=e.class_name,
                )
                for e in sc.existing
            ],
        )
    ]
    usernames = {}
    if sc.other_district:
        other = existing_student("O1", order="ENT-D2", username=OTHER_USERNAME)
        docs.append(district_doc(code="D2", licenses=5, existing=[other]))
        usernames[OTHER_USERNAME.lower()] = ("D2", "O1")
    if any(e.school == "900" and e.status == "active" for e in sc.existing):
        # the master data places an active student only at an open school: such students
        # were created while 900 was open, and the district closed it since
        opened = {**docs[0], "schools": [{**s, "active": True} for s in docs[0]["schools"]]}
        load(conn, opened, *docs[1:])
    load(conn, *docs)
    on = {o: sum(e.status == "active" and e.order == o for e in sc.existing) for o in (ENT, REG)}
    state = DistrictState(
        code="D1",
        enterprise_order=ENT,
        schools={
            "D1-HB": School(holding_bin=True),
            "101": School(),
            "102": School(),
            "900": School(active=False),
        },
        orders={
            ENT: Order("enterprise", sc.enterprise_size, on[ENT]),
            REG: Order("regular", sc.regular_size, on[REG]),
        },
        students={
            e.student_id: Student(
                status=e.status,
                order=e.order,
                school_code=e.school,
                last_name=e.last_name,
                first_name="First",
                middle_name=e.middle_name,
                grade=e.grade,
                username=e.username,
                email=e.email,
                class_name=e.class_name,
                password=None,
            )
            for e in sc.existing
        },
        usernames=usernames,
    ).with_own_usernames()
    assert district_state_from_db(conn, "D1") == state  # the benchmark's way in, too
    return state


def _engine_errors(result: UploadResult) -> list[tuple[int, str, str, str]]:
    e = result.errors
    return [
        (int(line), str(sid), str(col), str(code))
        for line, sid, col, code in zip(
            e["line"], e["student_id"], e["column"], e["code"], strict=True
        )
    ]


def _compare(
    conn: psycopg.Connection, hasher: PasswordHasher, ref: ReferenceResult, res: UploadResult
) -> None:
    engine_errors = _engine_errors(res)
    ref_errors = [(e.line, e.student_id, e.column, e.code) for e in ref.errors]
    assert [e[0] for e in engine_errors] == sorted(e[0] for e in engine_errors), "file order"
    only_engine = sorted((Counter(engine_errors) - Counter(ref_errors)).elements())
    only_reference = sorted((Counter(ref_errors) - Counter(engine_errors)).elements())
    assert (only_engine, only_reference) == ([], []), "errors: (engine only, reference only)"
    assert res.status == ref.status
    assert res.counts == ref.counts
    assert res.error_codes == ref.error_codes

    stored = students(conn, "D1")
    hashes = {sid: s.pop("password_hash") for sid, s in stored.items()}
    expected = {
        sid: {k: v for k, v in vars(s).items() if k != "password"}
        for sid, s in ref.state.students.items()
    }
    assert stored == expected
    for sid, s in ref.state.students.items():
        if s.password is None:
            assert hashes[sid] is None, sid
        else:
            assert hasher.verify(hashes[sid], s.password), sid
    used = dict(conn.execute("SELECT number, used FROM orders WHERE number LIKE '%D1'").fetchall())
    assert used == {n: o.used for n, o in ref.state.orders.items()}
    assert_license_invariant(conn)


def _lines_of(ref: ReferenceResult) -> dict[int, list[tuple[str, str]]]:
    out: dict[int, list[tuple[str, str]]] = {}
    for e in ref.errors:
        out.setdefault(e.line, []).append((e.column, e.code))
    return out


@pytest.fixture
def shared_db(db_url: str) -> Iterator[psycopg.Connection]:
    """One database for every example of the test (set up once per test function)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sc=scenarios())
def test_engine_equals_reference_and_is_idempotent(
    shared_db: psycopg.Connection, sc: Scenario
) -> None:
    conn, hasher = shared_db, PasswordHasher(config.argon2_settings())
    state = _setup(conn, sc)

    first = reference_process(sc.data, state)
    _compare(conn, hasher, first, run(conn, sc.data))

    second = reference_process(sc.data, first.state)
    result = run(conn, sc.data)
    _compare(conn, hasher, second, result)

    # the same file after a rotation of the secret key, the old key as the previous one:
    # what the reference does (it compares passwords in clear), hashing nothing more
    third = reference_process(sc.data, second.state)
    rotated = Engine(secret=ROTATED_KEY, previous_secrets=(config.secret_key(),), hasher=hasher)
    after_rotation = run(conn, sc.data, engine=rotated)
    _compare(conn, hasher, third, after_rotation)
    assert after_rotation.hashed_passwords <= result.hashed_passwords

    # SPEC §4: the second pass counts every row as unchanged or as the same error, except
    # where transitions.csv itself takes two passes to settle: an X row that created a
    # student (case 16) is STUDENT_EXISTS now (case 11), and a D row that deactivated a
    # regular-order student (case 4: it stays on its order) now moves it to Enterprise
    # (case 10: updated). And (README) a row refused USERNAME_TAKEN for a username another
    # row freed may apply now, and return a license a NO_LICENSE_AVAILABLE row then gets.
    before, after = _lines_of(first), _lines_of(second)
    run1 = list(zip(first.lines, first.cases, first.outcomes, strict=True))
    run2 = list(zip(second.lines, second.cases, second.outcomes, strict=True))
    x_added = {line for line, case, outcome in run1 if case == 16 and outcome == "added"}
    moved = {line for line, case, outcome in run1 if case == 4 and outcome == "deactivated"}
    freed = {line for line, errs in before.items() if ("Username", "USERNAME_TAKEN") in errs}
    no_license = {
        line for line, errs in before.items() if ("Status", "NO_LICENSE_AVAILABLE") in errs
    }
    for line in x_added:
        assert after[line] == [("Status", "STUDENT_EXISTS")], f"line {line}"
    for line in sorted(set(before) | set(after) - x_added):
        if line in freed or (freed and line in no_license):
            continue
        assert after.get(line) == before.get(line), f"line {line}"
    if freed:
        return
    changes = [(line, case, outcome) for line, case, outcome in run2 if outcome != "unchanged"]
    changes = [c for c in changes if c[2] != "errors"]
    assert changes == [(line, 10, "updated") for line in sorted(moved)]
    assert result.counts["updated"] == len(moved)
    assert result.counts["unchanged"] == (
        first.counts["rows"] - first.counts["errors"] - len(x_added) - len(moved)
    )
    assert second.state.orders == first.state.orders
    assert second.state.students.keys() == first.state.students.keys()
    for sid, s in second.state.students.items():
        was = first.state.students[sid]
        assert s in (was, replace(was, order=ENT)) and (s == was or s.status == "deactivated")


def test_reference_returns_licenses_before_acquisitions() -> None:
    """The reference on its own (SPEC §4): with the bin empty, a new student on line 2 gets
    the license that the D row on line 3 returns; the third row finds the bin empty."""
    state = DistrictState(
        code="D1",
        enterprise_order=ENT,
        schools={"D1-HB": School(holding_bin=True), "101": School()},
        orders={ENT: Order("enterprise", 1, 1)},
        students={
            "S1": Student("active", ENT, "101", "L", "F", None, "5", "old1", None, None, None)
        },
    ).with_own_usernames()
    rows = [
        ["101", "N1", "L", "F", "", "05", "new1", "secret1", "", "", "a"],
        ["101", "S1", "L", "F", "", "5", "old1", "", "", "", "D"],
        ["101", "N2", "L", "F", "", "k", "new2", "secret1", "", "", "A"],
    ]
    data = "\r\n".join(",".join(r) for r in [list(HEADER), *rows]).encode()
    result = reference_process(data, state)
    assert result.outcomes == ["added", "deactivated", "errors"]
    assert [(e.line, e.code) for e in result.errors] == [(4, "NO_LICENSE_AVAILABLE")]
    assert result.state.orders[ENT].used == 1
    assert result.state.students["N1"].grade == "5"
    assert result.state.usernames["new1"] == ("D1", "N1")
    assert state.students.keys() == {"S1"}  # the input state is left as it was
