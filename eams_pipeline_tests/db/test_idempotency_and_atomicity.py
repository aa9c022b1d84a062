"""The same file twice; a failure in the middle of applying; the same upload twice."""

from __future__ import annotations

import psycopg
import pytest

from eams_pipeline.db import apply as db_apply
from eams_pipeline_tests.builders import (
    assert_license_invariant,
    district_doc,
    existing_student,
    load,
    row,
    run,
)

TABLES = ("students", "orders", "uploads", "upload_errors", "student_history")


def dump(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}


def _mixed_file() -> list[dict[str, str]]:
    return [
        row("E1", "A", last_name="Renamed"),
        row("E2", "D", password=""),
        row("R1", "A", password=""),
        row("N1"),
        row("N2", "X"),
        row("N3", "D"),  # STUDENT_NOT_FOUND
        row("N4", grade="99"),
        row("N5"),  # no license left
    ]


@pytest.fixture
def district(conn):
    load(
        conn,
        district_doc(
            licenses=3,  # 2 used: one free, one more returned by E2 (D)
            existing=[
                existing_student("E1"),
                existing_student("E2"),
                existing_student("R1", order="REG-D1"),
            ],
        ),
    )
    return conn


def test_the_same_file_twice_gives_the_same_state_and_counts_unchanged(district) -> None:
    first = run(district, _mixed_file())
    assert first.counts == {
        "rows": 8,
        "added": 2,
        "activated": 0,
        "deactivated": 1,
        "updated": 2,
        "unchanged": 0,
        "errors": 3,
    }
    state = dump(district)["students"]
    second = run(district, _mixed_file())
    # every row is unchanged or an error; N2 (X) now exists, the rest are the same errors
    assert second.counts == {
        "rows": 8,
        "added": 0,
        "activated": 0,
        "deactivated": 0,
        "updated": 0,
        "unchanged": 4,
        "errors": 4,
    }
    assert second.errors[["student_id", "code"]].values.tolist() == [
        ["N2", "STUDENT_EXISTS"],
        ["N3", "STUDENT_NOT_FOUND"],
        ["N4", "INVALID_GRADE"],
        ["N5", "NO_LICENSE_AVAILABLE"],
    ]
    assert first.errors[["student_id", "code"]].values.tolist() == [
        ["N3", "STUDENT_NOT_FOUND"],
        ["N4", "INVALID_GRADE"],
        ["N5", "NO_LICENSE_AVAILABLE"],
    ]
    assert dump(district)["students"] == state
    assert_license_invariant(district)


def test_processing_a_clean_file_again_counts_every_row_unchanged(district) -> None:
    rows = [row("E1", "A", password=""), row("N1"), row("N2", "X", email="a@b.org")]
    first = run(district, rows)
    assert first.counts["errors"] == 0
    second = run(
        district,
        [r | ({"status": "A"} if r["student_id"] != "N2" else {"status": "D"}) for r in rows],
    )
    assert second.counts == {
        "rows": 3,
        "added": 0,
        "activated": 0,
        "deactivated": 0,
        "updated": 0,
        "unchanged": 3,
        "errors": 0,
    }


@pytest.mark.parametrize(
    "step",
    ["insert_new_students", "update_changed_students", "move_licenses", "record_history"],
)
def test_a_failure_in_the_middle_of_applying_leaves_the_database_as_it_was(
    district, monkeypatch, step
) -> None:
    before = dump(district)
    original = getattr(db_apply, step)

    def fail_after(*args, **kwargs):
        original(*args, **kwargs)  # the step's writes happen, then the process dies
        raise RuntimeError(f"injected failure after {step}")

    monkeypatch.setattr(db_apply, step, fail_after)
    with pytest.raises(RuntimeError, match="injected failure"):
        run(district, _mixed_file(), key="D1-crash")
    assert dump(district) == before
    monkeypatch.undo()
    # and the same upload then applies normally
    result = run(district, _mixed_file(), key="D1-crash")
    assert result.counts["added"] == 2
    assert_license_invariant(district)


def test_applying_the_same_upload_twice_is_a_no_op(district) -> None:
    first = run(district, _mixed_file(), key="D1-20261128T020000Z")
    state = dump(district)
    again = run(district, _mixed_file(), key="D1-20261128T020000Z")
    assert again.already_applied
    assert again.upload_id == first.upload_id
    assert again.counts == first.counts and again.error_codes == first.error_codes
    assert again.errors[["line", "code"]].values.tolist() == (
        first.errors[["line", "code"]].values.tolist()
    )
    assert dump(district) == state


def test_the_same_upload_key_with_other_bytes_is_refused(district) -> None:
    run(district, [row("N1")], key="D1-k")
    with pytest.raises(ValueError, match="other content"):
        run(district, [row("N2")], key="D1-k")


def test_dry_run_changes_nothing_and_reports_the_same_figures(district) -> None:
    before = dump(district)
    dry = run(district, _mixed_file(), dry_run=True)
    assert dump(district) == before
    assert dry.upload_id is None
    real = run(district, _mixed_file())
    assert dry.counts == real.counts and dry.error_codes == real.error_codes


def test_a_database_error_while_updating_students_comes_out_as_itself(district) -> None:
    """The UPDATE runs with planner settings of its own: a failing UPDATE must raise its
    own error (what callers and operators see), not one from putting the settings back
    in the aborted transaction."""
    with district.transaction():
        district.execute("ALTER TABLE students ADD CONSTRAINT no_boom CHECK (last_name <> 'Boom')")
    before = dump(district)
    try:
        with pytest.raises(psycopg.errors.CheckViolation, match="no_boom"):
            run(district, [row("E1", "A", last_name="Boom")], key="D1-boom")
        assert dump(district) == before
    finally:
        with district.transaction():
            district.execute("ALTER TABLE students DROP CONSTRAINT no_boom")
