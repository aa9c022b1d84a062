"""The change guard (issue 9 §1) and full-roster mode (§2), on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from eams_pipeline.core.guard import DEFAULT_THRESHOLDS, GuardFigures, evaluate, parse_thresholds
from eams_pipeline.core.master_data import MasterDataError, parse_master_data
from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.export import export_licenses, export_students
from eams_pipeline.services.review import ReviewRefused, approve, discard
from eams_pipeline_tests.builders import (
    assert_license_invariant,
    csv_bytes,
    district_doc,
    existing_student,
    load,
    row,
    run,
    students,
    used,
)
from eams_pipeline_tests.builders import (
    test_engine as make_engine,
)

T0 = dt.datetime(2026, 1, 14, 2, 0, tzinfo=dt.UTC)


def _ids(n: int) -> list[str]:
    return [f"S{i:03d}" for i in range(n)]


def _district(conn, n: int = 20, guard=None, mode=None, **kw) -> None:
    existing = [existing_student(sid) for sid in _ids(n)]
    load(conn, district_doc(licenses=100, existing=existing, guard=guard, mode=mode, **kw))


def _state(conn) -> tuple:
    return export_students(conn, "D1"), export_licenses(conn, "D1")


def _file(deactivate: int, n: int = 20, updated: int = 0) -> list[dict[str, str]]:
    """All n existing students (passwords unchanged): the first `deactivate` as D, the
    next `updated` renamed, the others as stored."""
    rows = []
    for i, sid in enumerate(_ids(n)):
        if i < deactivate:
            rows.append(row(sid, "D", password=""))
        elif i < deactivate + updated:
            rows.append(row(sid, "A", password="", first_name="Renamed"))
        else:
            rows.append(row(sid, "A", password=""))
    return rows


# --- the rules, pure ------------------------------------------------------------------


def test_defaults_and_parsing() -> None:
    assert parse_thresholds(None) == DEFAULT_THRESHOLDS
    assert parse_thresholds("off") == dict.fromkeys(DEFAULT_THRESHOLDS)
    assert parse_thresholds({"max_updated_pct": 0, "max_deactivated_pct": 5}) == {
        "max_deactivated_pct": 5,
        "max_updated_pct": None,
        "max_row_drop_pct": 25,
    }
    with pytest.raises(ValueError, match="unknown key"):
        parse_thresholds({"max_deleted_pct": 3})
    with pytest.raises(MasterDataError, match="mode"):
        doc = district_doc(mode="nightly")
        import yaml

        parse_master_data(yaml.safe_dump({"districts": [doc]}))


@pytest.mark.parametrize(
    ("figures", "rule"),
    [
        (dict(deactivated=10, active_before=100), None),  # exactly 10%: passes
        (dict(deactivated=11, active_before=100), "max_deactivated_pct"),
        (dict(updated=75, students_before=100), None),
        (dict(updated=76, students_before=100), "max_updated_pct"),
        (dict(rows=75, last_applied_rows=100), None),  # 25% fewer: passes
        (dict(rows=74, last_applied_rows=100), "max_row_drop_pct"),
        (dict(rows=10, last_applied_rows=None), None),  # no applied upload yet
        (dict(deactivated=5, active_before=0), None),  # nothing active: cannot trip
    ],
)
def test_each_rule_trips_above_its_limit_not_at_it(figures, rule) -> None:
    base = dict(
        active_before=100,
        students_before=100,
        deactivated=0,
        updated=0,
        rows=100,
        last_applied_rows=100,
    )
    trips = evaluate(DEFAULT_THRESHOLDS, GuardFigures(**{**base, **figures}))
    assert [t.rule for t in trips] == ([rule] if rule else [])


def test_the_message_names_the_figures() -> None:
    f = GuardFigures(9900, 9900, 4812, 0, 9900, 9900)
    (trip,) = evaluate(DEFAULT_THRESHOLDS, f)
    assert trip.message == "deactivates 4,812 of 9,900 active students (48.6%), limit 10%"


def test_a_rule_at_zero_or_null_is_off() -> None:
    f = GuardFigures(10, 10, 10, 10, 1, 100)
    assert evaluate(parse_thresholds("off"), f) == []
    assert (
        evaluate(
            parse_thresholds(
                {"max_deactivated_pct": 0, "max_updated_pct": None, "max_row_drop_pct": 0}
            ),
            f,
        )
        == []
    )


# --- on the database ------------------------------------------------------------------


@pytest.mark.parametrize(("deactivate", "held"), [(2, False), (3, True)])
def test_deactivations_trip_above_ten_percent_of_active(conn, deactivate, held) -> None:
    _district(conn, guard=None)  # the README's defaults; 20 active students
    before = _state(conn)
    result = run(conn, _file(deactivate), key="D1-k1", received_at=T0)
    assert result.counts["deactivated"] == deactivate
    if held:
        assert result.status == UploadStatus.HELD
        assert result.guard_trip["rule"] == "max_deactivated_pct"
        assert (
            "deactivates 3 of 20 active students (15.0%), limit 10%"
            in (result.guard_trip["message"])
        )
        assert _state(conn) == before  # a held upload changes nothing
        assert conn.execute("SELECT count(*) FROM student_history").fetchone()[0] == 0
    else:
        assert result.status == UploadStatus.PROCESSED
    record = db_uploads.get_upload(conn, "D1-k1")
    assert record.status == result.status
    assert record.counts == result.counts


@pytest.mark.parametrize(("renamed", "held"), [(15, False), (16, True)])
def test_updates_trip_above_75_percent_of_students(conn, renamed, held) -> None:
    _district(conn, guard=None)
    result = run(conn, _file(0, updated=renamed), key="D1-k1", received_at=T0)
    assert result.counts["updated"] == renamed
    assert (result.status == UploadStatus.HELD) is held
    if held:
        assert result.guard_trip["rule"] == "max_updated_pct"


@pytest.mark.parametrize(("rows", "held"), [(15, False), (14, True)])
def test_a_truncated_file_trips_the_row_drop_rule(conn, rows, held) -> None:
    _district(conn, guard={"max_deactivated_pct": 0, "max_updated_pct": 0})
    assert run(conn, _file(0), key="D1-k1", received_at=T0).status == UploadStatus.PROCESSED
    result = run(conn, _file(0)[:rows], key="D1-k2", received_at=T0 + dt.timedelta(days=1))
    assert (result.status == UploadStatus.HELD) is held
    if held:
        assert result.guard_trip["trips"][0]["value"] == 6
        assert result.guard_trip["trips"][0]["base"] == 20


def test_a_held_upload_is_not_applied_by_running_it_again(conn) -> None:
    _district(conn, guard=None)
    before = _state(conn)
    rows = _file(10)
    assert run(conn, rows, key="D1-k1", received_at=T0).status == UploadStatus.HELD
    again = run(conn, rows, key="D1-k1", received_at=T0)
    assert again.status == UploadStatus.HELD and again.already_applied
    assert _state(conn) == before


def test_approve_applies_what_the_plan_says_against_the_current_state(conn) -> None:
    _district(conn, guard=None)
    rows = [*_file(10), row("NEW1")]
    data = csv_bytes(rows)
    held = run(conn, data, key="D1-k1", received_at=T0)
    assert held.status == UploadStatus.HELD
    # meanwhile a newer... no: an older-received change applied by hand to one student
    # (S019 deactivated): approval re-plans, so S019's A row now counts as activated
    conn.execute("UPDATE students SET status = 'deactivated' WHERE student_id = 'S019'")
    conn.execute("UPDATE orders SET used = used - 1 WHERE number = 'ENT-D1'")
    result = approve(conn, "D1-k1", data, make_engine(), decided_by="alice")
    assert result.status == UploadStatus.PROCESSED
    assert result.counts | {"rows": 21} == {
        "rows": 21,
        "added": 1,
        "activated": 1,
        "deactivated": 10,
        "updated": 0,
        "unchanged": 9,
        "errors": 0,
    }
    s = students(conn)
    assert [sid for sid, v in s.items() if v["status"] == "deactivated"] == _ids(10)
    assert s["NEW1"]["status"] == "active" and s["S019"]["status"] == "active"
    assert used(conn, "ENT-D1") == 11
    assert_license_invariant(conn)
    decision = conn.execute(
        "SELECT status, decision, decided_by, decided_at IS NOT NULL, guard_trip->>'rule' "
        "FROM uploads WHERE upload_key = 'D1-k1'"
    ).fetchone()
    assert decision == ("processed", "approved", "alice", True, "max_deactivated_pct")
    with pytest.raises(ReviewRefused, match="not held"):
        approve(conn, "D1-k1", data, make_engine(), decided_by="alice")


def test_approve_refuses_other_bytes(conn) -> None:
    _district(conn, guard=None)
    run(conn, _file(10), key="D1-k1", received_at=T0)
    with pytest.raises(ReviewRefused, match="not upload"):
        approve(conn, "D1-k1", csv_bytes(_file(9)), make_engine(), decided_by="a")


def test_discard_applies_nothing_and_is_recorded(conn) -> None:
    _district(conn, guard=None)
    before = _state(conn)
    rows = _file(10)
    run(conn, rows, key="D1-k1", received_at=T0)
    result = discard(conn, "D1-k1", decided_by="bob")
    assert result.status == UploadStatus.DISCARDED
    assert _state(conn) == before
    assert run(conn, rows, key="D1-k1", received_at=T0).status == UploadStatus.DISCARDED
    assert _state(conn) == before
    with pytest.raises(ReviewRefused):
        approve(conn, "D1-k1", csv_bytes(rows), make_engine(), decided_by="bob")


def test_a_newer_upload_supersedes_a_held_one(conn) -> None:
    _district(conn, guard=None)
    held_rows = _file(10)
    run(conn, held_rows, key="D1-k1", received_at=T0)
    newer = run(conn, _file(1), key="D1-k2", received_at=T0 + dt.timedelta(days=1))
    assert newer.status == UploadStatus.PROCESSED and newer.superseded_held == ["D1-k1"]
    record = db_uploads.get_upload(conn, "D1-k1")
    assert record.status == UploadStatus.SUPERSEDED and record.guard_trip is not None
    # a plain re-run does not apply it
    assert run(conn, held_rows, key="D1-k1", received_at=T0).status == UploadStatus.SUPERSEDED
    with pytest.raises(ReviewRefused, match="allow-older"):
        approve(conn, "D1-k1", csv_bytes(held_rows), make_engine(), decided_by="c")
    result = approve(
        conn, "D1-k1", csv_bytes(held_rows), make_engine(), decided_by="c", allow_older=True
    )
    assert result.status == UploadStatus.PROCESSED
    assert sum(v["status"] == "deactivated" for v in students(conn).values()) == 10
    assert_license_invariant(conn)


def test_a_held_upload_keeps_its_errors_for_the_error_file(conn) -> None:
    _district(conn, guard=None)
    rows = [*_file(10), row("BAD", grade="15")]
    result = run(conn, rows, key="D1-k1", received_at=T0)
    assert result.status == UploadStatus.HELD
    assert result.error_codes == {"INVALID_GRADE": 1}
    assert len(db_uploads.load_errors(conn, result.upload_id)) == 1


def test_dry_run_reports_held(conn) -> None:
    _district(conn, guard=None)
    before = _state(conn)
    result = run(conn, _file(10), dry_run=True)
    assert result.status == UploadStatus.HELD and result.guard_trip is not None
    assert _state(conn) == before


# --- full roster ----------------------------------------------------------------------


def test_full_roster_deactivates_exactly_the_absent_active_students(conn) -> None:
    existing = [existing_student(sid) for sid in _ids(10)]
    existing += [
        existing_student("R1", order="REG-D1"),
        existing_student("OFF", status="deactivated"),
    ]
    load(conn, district_doc(licenses=100, existing=existing, mode="full_roster"))
    ent, reg = used(conn, "ENT-D1"), used(conn, "REG-D1")
    # the file: S000-S006 (S006 with an error: still named), a new student; absent: S007-S009,
    # R1 (regular order) and OFF (already deactivated: untouched)
    rows = [row(sid, password="") for sid in _ids(6)]
    rows += [row("S006", grade="15"), row("NEW")]
    result = run(conn, rows, key="D1-k1", received_at=T0)
    assert result.status == UploadStatus.PARTIALLY_PROCESSED
    assert result.deactivated_missing == 4
    assert result.counts["deactivated"] == 0 and result.counts["added"] == 1
    s = students(conn)
    assert {sid for sid, v in s.items() if v["status"] == "deactivated"} == {
        "S007",
        "S008",
        "S009",
        "R1",
        "OFF",
    }
    assert s["R1"]["order"] == "REG-D1"  # stays on its order, license back to it
    assert used(conn, "ENT-D1") == ent - 3 + 1
    assert used(conn, "REG-D1") == reg - 1
    assert_license_invariant(conn)
    record = db_uploads.get_upload(conn, "D1-k1")
    assert record.deactivated_missing == 4
    lines = conn.execute(
        "SELECT count(*) FROM student_history WHERE line_number = 0 AND change = 'deactivated'"
    ).fetchone()[0]
    assert lines == 4


def test_full_roster_never_on_a_rejected_file(conn) -> None:
    existing = [existing_student(sid) for sid in _ids(5)]
    load(conn, district_doc(existing=existing, mode="full_roster"))
    before = _state(conn)
    result = run(conn, b"School Code,Wrong\r\n1,2\r\n", key="D1-k1", received_at=T0)
    assert result.status == UploadStatus.REJECTED and result.deactivated_missing == 0
    assert _state(conn) == before


def test_full_roster_is_under_the_guard(conn) -> None:
    _district(conn, guard=None, mode="full_roster")
    before = _state(conn)
    # one school's export only: half of the students are absent
    result = run(conn, [row(sid, password="") for sid in _ids(10)], key="D1-k1", received_at=T0)
    assert result.status == UploadStatus.HELD
    assert result.deactivated_missing == 10
    assert "deactivates 10 of 20 active students (50.0%)" in result.guard_trip["message"]
    assert _state(conn) == before


# --- emails ---------------------------------------------------------------------------


def test_held_emails_carry_figures_and_commands_never_student_data() -> None:
    from eams_pipeline.core.notifications import build_held_operator_email, build_upload_email

    summary = {
        "upload_id": 7, "district": "D1", "status": "held", "rows": 3, "added": 0,
        "activated": 0, "deactivated": 2, "updated": 0, "unchanged": 0, "errors": 1,
        "error_codes": {"INVALID_GRADE": 1}, "error_file": "/errors/e.csv",
        "deactivated_missing": 0, "guard": None,
    }  # fmt: skip
    trip = {
        "rule": "max_deactivated_pct",
        "message": "deactivates 2 of 3 active students (66.7%), limit 10%",
        "trips": [
            {"rule": "max_deactivated_pct",
             "message": "deactivates 2 of 3 active students (66.7%), limit 10%"}
        ],
    }  # fmt: skip
    ops = build_held_operator_email(
        operators=["ops@example.com"], sender="eams@example.com", district_code="D1",
        district_name="District D1", upload_key="D1-k1", upload_id=7, summary=summary,
        guard_trip=trip,
    )  # fmt: skip
    body = ops.get_content()
    assert "HELD" in ops["Subject"] and ops["Subject"].endswith("upload D1-k1")  # the key, not 7
    assert "deactivates 2 of 3 active students (66.7%), limit 10%" in body
    assert "eams uploads approve D1-k1" in body and "eams uploads discard D1-k1" in body
    district = build_upload_email(
        district_code="D1", district_name="District D1", contacts=["a@d1.example.org"],
        sender="eams@example.com", summary=summary, error_file_path="/errors/e.csv",
    )  # fmt: skip
    assert "HELD for review" in district["Subject"]
    text = district.get_content()
    assert "NOTHING was applied" in text and "/errors/e.csv" in text
    discarded = build_upload_email(
        district_code="D1", district_name="District D1", contacts=["a@d1.example.org"],
        sender="eams@example.com", summary=summary | {"status": "discarded"},
        error_file_path=None,
    )  # fmt: skip
    assert "DISCARDED" in discarded["Subject"]
