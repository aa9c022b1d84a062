"""Every case of transitions.csv, parametrised from the file itself, on a real database."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from eams_pipeline.core.transitions import TRANSITIONS
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
from eams_pipeline_tests.spec import require_spec_file, spec_file
from eams_reference import transitions_of_the_code


def _cases_of_the_contract(path: Path) -> list[dict[str, str]]:
    """transitions.csv's rows, `any` spelled out as both order kinds."""
    cases = []
    with path.open(newline="", encoding="utf-8") as fh:
        for case in csv.DictReader(fh):
            orders = (
                ["enterprise", "regular"]
                if case["order_before"] == "any"
                else [case["order_before"]]
            )
            for order in orders:
                cases.append({**case, "order_before": order})
    return cases


def _cases() -> list[dict[str, str]]:
    path = spec_file("transitions.csv")
    return _cases_of_the_contract(path) if path else list(transitions_of_the_code().values())


CASES = _cases()
ORDER_NUMBER = {"enterprise": "ENT-D1", "regular": "REG-D1"}


def test_the_table_in_code_is_transitions_csv() -> None:
    contract = _cases_of_the_contract(require_spec_file("transitions.csv"))
    from_file = sorted(
        (
            int(c["case"]),
            c["student_before"],
            c["order_before"],
            c["status_flag"],
            c["error_code"] or None,
            c["student_after"],
            c["order_after"],
            int(c["enterprise_used_delta"]),
            int(c["previous_order_used_delta"]),
        )
        for c in contract
    )
    in_code = sorted(
        (
            int(t.case),
            t.before,
            t.order,
            t.flag,
            t.error if isinstance(t.error, str) else None,
            t.after,
            t.order_after,
            int(t.ent),
            int(t.prev),
        )
        for t in TRANSITIONS.itertuples()
    )
    assert in_code == from_file


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[
        f"case{c['case']}-{c['student_before']}-{c['order_before']}-{c['status_flag']}"
        for c in CASES
    ],
)
def test_transition(conn, case: dict[str, str]) -> None:
    before = case["student_before"]
    existing = []
    if before != "absent":
        existing.append(
            existing_student(
                "S1", status=before, order=ORDER_NUMBER[case["order_before"]], last_name="Before"
            )
        )
    load(conn, district_doc(licenses=10, regular_licenses=10, existing=existing))
    ent_before, reg_before = used(conn, "ENT-D1"), used(conn, "REG-D1")

    result = run(conn, [row("S1", case["status_flag"], last_name="After", grade="06")])

    state = students(conn).get("S1")
    if case["error_code"]:
        assert result.error_codes == {case["error_code"]: 1}
        assert result.counts["errors"] == 1
    else:
        assert result.error_codes == {}
        assert result.counts["errors"] == 0

    if case["student_after"] == "absent":
        assert state is None
    else:
        assert state is not None
        assert state["status"] == case["student_after"]
        expected_order = {
            "enterprise": "ENT-D1",
            "regular": "REG-D1",
            "unchanged": ORDER_NUMBER.get(case["order_before"]),
        }[case["order_after"]]
        assert state["order"] == expected_order
        if case["data_updated"] == "yes":
            assert (state["last_name"], state["grade"]) == ("After", "6")
        else:
            assert state["last_name"] == "Before"

    assert used(conn, "ENT-D1") - ent_before == int(case["enterprise_used_delta"])
    regular_delta = (
        int(case["previous_order_used_delta"]) if case["order_before"] == "regular" else 0
    )
    assert used(conn, "REG-D1") - reg_before == regular_delta
    assert_license_invariant(conn)


@pytest.mark.parametrize(
    ("before", "order", "flag", "outcome"),
    [
        ("absent", "none", "A", "added"),
        ("absent", "none", "X", "added"),
        ("deactivated", "enterprise", "A", "activated"),
        ("active", "enterprise", "D", "deactivated"),
        ("active", "regular", "D", "deactivated"),
        ("active", "regular", "A", "updated"),  # order changes even if data does not
        ("deactivated", "regular", "I", "updated"),
        ("active", "enterprise", "A", "unchanged"),
        ("deactivated", "enterprise", "D", "unchanged"),
        ("active", "enterprise", "I", "unchanged"),
    ],
)
def test_outcome_counts(conn, before: str, order: str, flag: str, outcome: str) -> None:
    """Every data row falls in exactly one count (SPEC §7)."""
    existing = []
    if before != "absent":
        existing.append(existing_student("S1", status=before, order=ORDER_NUMBER[order]))
    load(conn, district_doc(existing=existing))
    # the same data the student already has, so only status/order can change
    r = row("S1", flag, last_name="LastS1", username="userS1", password="")
    if before == "absent":
        r["password"] = "secret-pw"
    result = run(conn, [r])
    expected = dict.fromkeys(
        ("added", "activated", "deactivated", "updated", "unchanged", "errors"), 0
    )
    expected[outcome] = 1
    assert {k: result.counts[k] for k in expected} == expected
    assert result.counts["rows"] == 1
