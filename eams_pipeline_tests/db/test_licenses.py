"""License scarcity: every return of a file before any acquisition, then file order."""

from __future__ import annotations

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


def test_returns_of_the_file_count_before_acquisitions(conn) -> None:
    # the bin is full (2 of 2 used); the deactivation comes AFTER the new students in the file
    load(conn, district_doc(licenses=2, existing=[existing_student("E1"), existing_student("E2")]))
    result = run(conn, [row("N1"), row("N2"), row("E1", "D", password="")])
    assert result.error_codes == {"NO_LICENSE_AVAILABLE": 1}
    assert result.errors["student_id"].tolist() == ["N2"]  # N1 got E1's returned license
    assert result.counts["added"] == 1 and result.counts["deactivated"] == 1
    assert used(conn, "ENT-D1") == 2
    assert_license_invariant(conn)


def test_acquisitions_are_granted_in_file_order(conn) -> None:
    load(
        conn,
        district_doc(
            licenses=3,
            existing=[
                existing_student("R1", order="REG-D1"),
                existing_student("OFF", status="deactivated"),
            ],
        ),
    )
    rows = [row("N1"), row("R1", "A", password=""), row("OFF", "A", password=""), row("N4")]
    result = run(conn, rows)
    assert result.errors[["line", "student_id", "code"]].values.tolist() == [
        [5, "N4", "NO_LICENSE_AVAILABLE"]
    ]
    state = students(conn)
    assert state["R1"]["order"] == "ENT-D1" and state["OFF"]["status"] == "active"
    assert "N4" not in state
    assert used(conn, "ENT-D1") == 3 and used(conn, "REG-D1") == 0
    assert_license_invariant(conn)


def test_a_row_that_needs_a_license_changes_nothing_when_none_is_left(conn) -> None:
    load(conn, district_doc(licenses=0, existing=[existing_student("R1", order="REG-D1")]))
    result = run(conn, [row("R1", "I", password="", last_name="Changed")])
    assert result.error_codes == {"NO_LICENSE_AVAILABLE": 1}
    state = students(conn)["R1"]
    assert (state["order"], state["last_name"]) == ("REG-D1", "LastR1")
    assert used(conn, "REG-D1") == 1
    assert_license_invariant(conn)


def test_rows_with_errors_do_not_return_licenses(conn) -> None:
    load(conn, district_doc(licenses=1, existing=[existing_student("E1")]))
    # E1's deactivation fails (bad email), so its license is not returned to the bin
    result = run(conn, [row("E1", "D", password="", email="bad"), row("N1")])
    assert result.error_codes == {"INVALID_EMAIL": 1, "NO_LICENSE_AVAILABLE": 1}
    assert used(conn, "ENT-D1") == 1
    assert_license_invariant(conn)


def test_deactivation_on_a_regular_order_returns_the_license_to_that_order(conn) -> None:
    load(conn, district_doc(licenses=0, existing=[existing_student("R1", order="REG-D1")]))
    run(conn, [row("R1", "D", password="")])
    assert students(conn)["R1"]["order"] == "REG-D1"
    assert (used(conn, "REG-D1"), used(conn, "ENT-D1")) == (0, 0)
    assert_license_invariant(conn)
