"""The plan is pure: tested directly on an in-memory snapshot, without a database, the way
Dagster's examples test pure ops. (The database tests of `core/test_transitions.py` and
`db/test_licenses.py` check that the apply writes what the plan says.)"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from eams_pipeline.core.errors import concat_errors
from eams_pipeline.core.fingerprints import fingerprint_key
from eams_pipeline.core.plan import DistrictSnapshot, Plan, make_plan, match_rows
from eams_pipeline.core.reading import read_upload
from eams_pipeline.core.validation import normalise, validate_rows
from eams_pipeline_tests.builders import csv_bytes, row
from eams_pipeline_tests.core.test_transitions import CASES

ENT, REG, OTHER_REG = 1, 2, 3  # order ids
SCHOOL, BIN = 10, 11  # school ids
KEY = fingerprint_key(b"test-secret")


def snapshot(students: list[dict], bin_available: int = 10) -> DistrictSnapshot:
    schools = pd.DataFrame(
        {
            "code": ["101", "D1-HB"],
            "school_id": [SCHOOL, BIN],
            "active": [True, True],
            "holding_bin": [False, True],
        }
    )
    frame = pd.DataFrame(
        students,
        columns=[
            "student_id",
            "student_pk",
            "status",
            "order_id",
            "school_id",
            "data_hash",
            "password_fingerprint",
            "username_lower",
        ],
    ).astype({"student_pk": "Int64", "order_id": "Int64", "school_id": "Int64"})
    frame = frame.astype(
        {"data_hash": "Int64", "password_fingerprint": "Int64", "username_lower": "str"}
    )
    return DistrictSnapshot(
        district_id=1,
        enterprise_order_id=ENT,
        bin_available=bin_available,
        schools=schools,
        students=frame,
        taken_usernames=pd.DataFrame(
            {"username_lower": [], "district_id": [], "student_id": []}
        ).astype({"username_lower": "str", "district_id": "int64", "student_id": "str"}),
    )


def stored(student_id: str, status: str, order: int, pk: int = 1) -> dict:
    return {
        "student_id": student_id,
        "student_pk": pk,
        "status": status,
        "order_id": order,
        "school_id": SCHOOL,
        "data_hash": 0,  # differs from any file row: data counts as changed
        "password_fingerprint": None,
    }


def plan_of(rows: list[dict[str, str]], snap: DistrictSnapshot) -> Plan:
    parsed = read_upload(csv_bytes(rows))
    errors = concat_errors([parsed.malformed, validate_rows(parsed.rows)])
    rows = normalise(parsed.rows)
    return make_plan(rows, errors, parsed.total_rows, snap, match_rows(rows, snap.students), KEY)


@pytest.mark.parametrize("case", CASES, ids=[f"case{c['case']}-{c['order_before']}" for c in CASES])
def test_every_case_of_the_matrix(case: dict[str, str]) -> None:
    before = case["student_before"]
    students = []
    if before != "absent":
        order = ENT if case["order_before"] == "enterprise" else REG
        students = [stored("S1", before, order)]
    plan = plan_of([row("S1", case["status_flag"])], snapshot(students))

    if case["error_code"]:
        assert plan.error_codes == {case["error_code"]: 1}
        assert plan.counts["errors"] == 1 and plan.license_deltas.empty
        return
    decided = plan.rows.iloc[0]
    assert plan.counts["errors"] == 0
    assert decided["status_after"] == case["student_after"]
    assert decided["order_after_kind"] == case["order_after"]
    deltas = dict(zip(plan.license_deltas["order_id"], plan.license_deltas["delta"], strict=True))
    expected = {
        ENT: int(case["enterprise_used_delta"]),
        REG: int(case["previous_order_used_delta"]),
    }
    assert deltas == {k: v for k, v in expected.items() if v != 0}


def test_returns_are_counted_before_acquisitions_in_file_order() -> None:
    students = [stored("OLD1", "active", ENT, pk=1), stored("OLD2", "active", ENT, pk=2)]
    rows = [row("NEW1"), row("NEW2"), row("NEW3"), row("OLD1", "D"), row("OLD2", "D")]
    plan = plan_of(rows, snapshot(students, bin_available=0))
    # two returned licenses: the first two acquisitions in file order get them
    assert plan.counts["added"] == 2 and plan.counts["deactivated"] == 2
    assert plan.error_codes == {"NO_LICENSE_AVAILABLE": 1}
    assert plan.errors["line"].tolist() == [4]  # NEW3, the third acquisition
    assert plan.license_deltas.empty or plan.license_deltas["delta"].sum() == 0


def test_a_row_with_any_other_error_does_not_return_a_license() -> None:
    students = [stored("OLD1", "active", ENT)]
    rows = [row("OLD1", "D", grade="13"), row("NEW1")]
    plan = plan_of(rows, snapshot(students, bin_available=0))
    assert plan.error_codes == {"INVALID_GRADE": 1, "NO_LICENSE_AVAILABLE": 1}
    assert plan.counts["errors"] == 2 and plan.license_deltas.empty


def test_repeated_values_flags_every_copy_and_never_a_missing_value() -> None:
    from eams_pipeline.core.plan import repeated_values

    values = pd.Series(["a", None, "b", "a", None, "c", "b"], dtype="str")
    assert repeated_values(values).tolist() == [True, False, True, True, False, False, True]
    assert repeated_values(pd.Series([None, None], dtype="str")).tolist() == [False, False]
    assert repeated_values(pd.Series([], dtype="str")).tolist() == []


def test_repeated_student_ids_from_positions_match_repeated_values() -> None:
    import numpy as np

    from eams_pipeline.core.plan import repeated_student_ids, repeated_values

    ids = pd.Series(["S1", "N1", "S2", "S1", "N1", None, "N2", "S3"], dtype="str")
    positions = np.array([0, -1, 1, 0, -1, -1, -1, 2])  # S1, S2, S3 stored at 0, 1, 2
    expected = [True, True, False, True, True, False, False, False]
    assert repeated_values(ids).tolist() == expected
    assert repeated_student_ids(ids, positions).tolist() == expected


def test_repeated_usernames_by_positions_match_repeated_values() -> None:
    """Own usernames keyed by their student's position, the others by the stored student
    who holds them or among themselves: the same rows as hashing every username. Covers a
    new student claiming a stored student's username (in another case), two rows of one
    student, a username held by no one on two rows, a missing username, and a stored
    student renamed to a username another row also claims."""
    import numpy as np
    import pyarrow as pa

    from eams_pipeline.core.plan import (
        lower_usernames,
        own_usernames,
        repeated_usernames,
        repeated_values,
        student_positions,
    )

    students = pd.DataFrame(
        {
            "student_id": pd.Series(["S1", "S2", "S3", "S4"], dtype="str"),
            "username_lower": pd.Series(["ann", "bob", "cy", "dee"], dtype="str"),
        }
    )
    ids = pd.Series(["S1", "N1", "S2", "S2", "N2", "N3", "N4", "S3", "N5", "S4", "N6"], dtype="str")
    names = pd.Series(
        ["Ann", "ANN", "bob", "Bob", "zed", "Zed", None, "neu", "NEU", "dee", "solo"],
        dtype="str",
    )
    expected = repeated_values(pd.Series(lower_usernames(names), dtype="str")).tolist()
    assert expected == [True, True, True, True, True, True, False, True, True, False, False]
    positions = student_positions(ids, students)
    lowered = lower_usernames(names)
    own = own_usernames(lowered, students, positions)
    assert own.tolist() == [True, False, True, True, False, False, False, False, False, True, False]
    assert repeated_usernames(lowered, own, students, positions).tolist() == expected
    # no stored students (an onboarding file): every username is hashed
    none = students.iloc[0:0]
    at = np.full(len(ids), -1)
    assert (
        repeated_usernames(lowered, own_usernames(lowered, none, at), none, at).tolist() == expected
    )
    assert (
        repeated_usernames(pa.array([], pa.string()), np.zeros(0, bool), students, at[:0]).tolist()
        == []
    )


def test_repeated_usernames_agree_with_repeated_values_on_random_files() -> None:
    import numpy as np

    from eams_pipeline.core.plan import (
        lower_usernames,
        own_usernames,
        repeated_usernames,
        repeated_values,
        student_positions,
    )

    rng = np.random.default_rng(11)
    pool = np.array([f"u{i}" for i in range(40)] + [f"U{i}" for i in range(40)], dtype=object)
    for _ in range(200):
        n_stored = int(rng.integers(0, 30))
        stored_names = rng.choice(40, size=n_stored, replace=False)
        students = pd.DataFrame(
            {
                "student_id": pd.Series([f"S{i}" for i in range(n_stored)], dtype="str"),
                "username_lower": pd.Series([f"u{i}" for i in stored_names], dtype="str"),
            }
        )
        n = int(rng.integers(0, 60))
        ids = pd.Series([f"S{i}" for i in rng.integers(0, 45, size=n)], dtype="str")
        names = pd.Series(rng.choice(pool, size=n), dtype="str")
        names[rng.random(n) < 0.1] = None
        lowered = lower_usernames(names)
        positions = student_positions(ids, students)
        own = own_usernames(lowered, students, positions)
        expected = repeated_values(pd.Series(lowered, dtype="str"))
        assert repeated_usernames(lowered, own, students, positions).tolist() == expected.tolist()


def _as_stored(
    rows: list[dict[str, str]], statuses: dict[str, str], orders: dict[str, int]
) -> list[dict]:
    """Stored students exactly as the rows give them (data fingerprint, password
    fingerprint and username): the rows of the next file that repeat them are quiet."""
    from eams_pipeline.core.fingerprints import data_fingerprint, password_fingerprint

    parsed = normalise(read_upload(csv_bytes(rows)).rows)
    data = data_fingerprint(parsed)
    passwords = password_fingerprint(parsed["student_id"], parsed["password"], KEY)
    return [
        {
            **stored(r["student_id"], statuses[r["student_id"]], orders[r["student_id"]], pk=i + 1),
            "data_hash": int(data[i]),
            "password_fingerprint": int(passwords[i]),
            "username_lower": r["username"].lower(),
        }
        for i, r in enumerate(rows)
    ]


def test_quiet_rows_are_counted_unchanged_and_only_the_others_are_decided() -> None:
    """A stored student's row that repeats what is stored, keeps its status and breaks no
    rule is quiet: counted `unchanged`, not in plan.rows. Each of the other rows below
    differs from a quiet one by one thing, and is decided (and counted) one by one."""
    first = [row(f"S{i}") for i in range(1, 9)]
    statuses = {f"S{i}": "active" for i in range(1, 9)} | {"S7": "deactivated", "S8": "deactivated"}
    orders = {f"S{i}": ENT for i in range(1, 9)} | {"S6": REG}
    snap = snapshot(_as_stored(first, statuses, orders))
    again = [
        row("S1"),  # quiet: A on an active student
        row("S2", "I"),  # quiet: I keeps an active student
        row("S3", last_name="Renamed"),  # updated: its data changed
        row("S4", password="new-secret"),  # updated: a new password
        row("S5", grade="13"),  # a column rule broken: an error
        row("S6"),  # on a regular order: A moves it to Enterprise (updated)
        row("S7", "D"),  # quiet: D keeps a deactivated student
        row("S8"),  # activated
    ]
    plan = plan_of(again, snap)
    assert plan.counts == {
        "rows": 8,
        "added": 0,
        "activated": 1,
        "deactivated": 0,
        "updated": 3,
        "unchanged": 3,
        "errors": 1,
    }
    assert sorted(plan.rows["student_id"]) == ["S3", "S4", "S5", "S6", "S8"]
    assert plan.error_codes == {"INVALID_GRADE": 1}
    # a closed school or a repeated row is never quiet: each is decided and fails
    closed = replace(
        snap,
        schools=snap.schools.assign(active=[False, True]),  # school 101 closed
    )
    assert plan_of([row("S1")], closed).error_codes == {"SCHOOL_NOT_FOUND": 1}
    assert plan_of([row("S1"), row("S1")], snap).error_codes == {
        "DUPLICATE_STUDENT_ID": 2,
        "DUPLICATE_USERNAME": 2,
    }


def test_rows_named_by_errors_are_found_in_any_index() -> None:
    import numpy as np

    from eams_pipeline.core.plan import _in_rows

    ascending = pd.DataFrame({"x": range(5)}, index=[0, 2, 3, 7, 9])
    assert _in_rows(ascending, np.array([9, 2, 4, 10, -1])).tolist() == [
        False,
        True,
        False,
        False,
        True,
    ]
    assert _in_rows(ascending, np.array([], dtype="int64")).tolist() == [False] * 5
    shuffled = ascending.iloc[[3, 0, 4, 1, 2]]  # not the file's order: a hash lookup then
    assert _in_rows(shuffled, np.array([9, 2])).tolist() == [False, False, True, True, False]
    assert _in_rows(ascending.iloc[0:0], np.array([1])).tolist() == []


def test_match_rows_computes_the_whole_match_once() -> None:
    """match_rows: each row's stored student, lower-cased and own username, repeated
    Student IDs and usernames, in one value; select keeps the whole file's flags."""
    import numpy as np

    students = pd.DataFrame(
        {
            "student_id": pd.Series(["S1", "S2"], dtype="str"),
            "username_lower": pd.Series(["ann", "bob"], dtype="str"),
        }
    )
    rows = pd.DataFrame(
        {
            "student_id": pd.Series(["S1", "N1", "S2", "N1", None], dtype="str"),
            "username": pd.Series(["Ann", "ANN", "new.bob", "zed", None], dtype="str"),
        }
    )
    match = match_rows(rows, students)
    assert match.positions.tolist() == [0, -1, 1, -1, -1]
    assert match.username_lower.to_pylist() == ["ann", "ann", "new.bob", "zed", None]
    assert match.own_usernames.tolist() == [True, False, False, False, False]
    assert match.repeated_ids.tolist() == [False, True, False, True, False]
    assert match.repeated_usernames.tolist() == [True, True, False, False, False]
    kept = match.select(np.array([False, True, False, True, True]))
    assert kept.positions.tolist() == [-1, -1, -1]
    assert kept.username_lower.to_pylist() == ["ann", "zed", None]
    assert kept.repeated_ids.tolist() == [True, True, False]
    assert kept.repeated_usernames.tolist() == [True, False, False]
    assert kept.own_usernames.tolist() == [False, False, False]


def test_repeated_usernames_when_no_row_names_a_username() -> None:
    """A file whose only new rows have an empty Username (REQUIRED_FIELD_MISSING) has no
    distinct username to key: found by the reference equivalence test (IndexError)."""
    import numpy as np
    import pyarrow as pa

    from eams_pipeline.core.plan import repeated_usernames

    no_students = pd.DataFrame({"username_lower": pd.Series([], dtype="str")})
    none = repeated_usernames(pa.array([None], pa.string()), np.array([False]), no_students,
                              np.array([-1]))
    assert none.tolist() == [False]
    mixed = repeated_usernames(
        pa.array([None, "ann", "ann", None], pa.string()),
        np.zeros(4, dtype=bool),
        no_students,
        np.full(4, -1),
    )
    assert mixed.tolist() == [False, True, True, False]
