"""The change guard and full-roster mode, on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from eams_pipeline.core.guard import (
    DEFAULT_THRESHOLDS,
    RULES,
    GuardFigures,
    evaluate,
    parse_thresholds,
    usual_rows,
)
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


# the default percentages with a floor of 1: a 20-student district shows each limit
SMALL = {"min_count": 1}


def _district(conn, n: int = 20, guard=SMALL, mode=None, baseline: bool = True, **kw) -> None:
    """n active students; with `baseline`, an applied upload the day before T0 (every
    student, unchanged): the guard holds nothing before a district has one."""
    existing = [existing_student(sid) for sid in _ids(n)]
    load(conn, district_doc(licenses=max(100, n), existing=existing, guard=guard, mode=mode, **kw))
    if baseline:
        first = run(conn, _file(0, n), key="D1-k0", received_at=T0 - dt.timedelta(days=1))
        assert first.status == UploadStatus.PROCESSED and first.counts["unchanged"] == n


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
    assert DEFAULT_THRESHOLDS["min_count"] == 25
    assert parse_thresholds("off") == {**dict.fromkeys(RULES), "min_count": 25}
    assert parse_thresholds({"max_updated_pct": 0, "max_deactivated_pct": 5}) == {
        "max_deactivated_pct": 5,
        "max_updated_pct": None,
        "max_row_drop_pct": 25,
        "min_count": 25,
    }
    assert parse_thresholds({"min_count": 0})["min_count"] == 0
    assert parse_thresholds({"min_count": 100})["min_count"] == 100
    with pytest.raises(ValueError, match="unknown key"):
        parse_thresholds({"max_deleted_pct": 3})
    for bad in (-1, 2.5, True, "25", None):
        with pytest.raises(ValueError, match=r"guard\.min_count must be a whole number"):
            parse_thresholds({"min_count": bad})
    with pytest.raises(MasterDataError, match="mode"):
        doc = district_doc(mode="nightly")
        import yaml

        parse_master_data(yaml.safe_dump({"districts": [doc]}))


def test_min_count_in_the_master_data_is_per_district() -> None:
    import yaml

    docs = [district_doc(code="D1", guard={"min_count": 3}), district_doc(code="D2", guard=None)]
    d1, d2 = parse_master_data(yaml.safe_dump({"districts": docs}))
    assert d1.guard["min_count"] == 3 and d1.guard["max_deactivated_pct"] == 10
    assert d2.guard == DEFAULT_THRESHOLDS
    with pytest.raises(MasterDataError, match="min_count"):
        parse_master_data(
            yaml.safe_dump({"districts": [district_doc(guard={"min_count": "a few"})]})
        )


def _figures(**kw) -> GuardFigures:
    base = dict(
        active_before=1000,
        students_before=1000,
        deactivated=0,
        updated=0,
        rows=1000,
        recent_rows=(1000,),
    )
    return GuardFigures(**{**base, **kw})


def _rules(figures: GuardFigures, **thresholds) -> list[str]:
    return [t.rule for t in evaluate({**DEFAULT_THRESHOLDS, **thresholds}, figures)]


@pytest.mark.parametrize(
    ("figures", "rule"),
    [
        (dict(deactivated=100), None),  # exactly 10%: passes
        (dict(deactivated=101), "max_deactivated_pct"),
        (dict(updated=750), None),
        (dict(updated=751), "max_updated_pct"),
        (dict(rows=750), None),  # 25% fewer: passes
        (dict(rows=749), "max_row_drop_pct"),
        (dict(deactivated=5, active_before=0), None),  # nothing active: cannot trip
    ],
)
def test_each_rule_trips_above_its_limit_not_at_it(figures, rule) -> None:
    assert _rules(_figures(**figures)) == ([rule] if rule else [])


@pytest.mark.parametrize(
    ("figures", "rule"),
    [
        # a 5-row incremental file after a 10-row one (50% fewer, 5 rows)
        (dict(active_before=10, students_before=10, rows=5, recent_rows=(10,)),
         "max_row_drop_pct"),
        # a 3-row file renames the one student of a 1-student district (100%, 1 student)
        (dict(active_before=1, students_before=1, updated=1, rows=3, recent_rows=(3,)),
         "max_updated_pct"),
        # 1 of 8 students deactivated (12.5%), 2 of 2 (100%)
        (dict(active_before=8, students_before=8, deactivated=1, rows=1, recent_rows=(1,)),
         "max_deactivated_pct"),
        (dict(active_before=2, students_before=2, deactivated=2, rows=2, recent_rows=(2,)),
         "max_deactivated_pct"),
        # 24 of 100 deactivated: 24% but under the floor
        (dict(active_before=100, students_before=100, deactivated=24, rows=24,
              recent_rows=(24,)), "max_deactivated_pct"),
    ],
)  # fmt: skip
def test_ordinary_small_nights_pass_by_the_floor_not_by_the_percentage(figures, rule) -> None:
    f = _figures(**figures)
    assert _rules(f) == []  # the defaults: min_count 25
    assert _rules(f, min_count=0) == [rule]  # the percentage alone would hold it


@pytest.mark.parametrize(
    ("figures", "rule"),
    [
        # 30 of 100 active students deactivated: 30%, and 30 >= 25
        (dict(active_before=100, students_before=100, deactivated=30, rows=30,
              recent_rows=(30,)), "max_deactivated_pct"),
        # exactly at the floor counts
        (dict(active_before=100, students_before=100, deactivated=25, rows=25,
              recent_rows=(25,)), "max_deactivated_pct"),
        # a truncated full extract: 200-row files, then 60 rows (140 fewer, 70%)
        (dict(active_before=200, students_before=200, rows=60, recent_rows=(200,) * 5),
         "max_row_drop_pct"),
    ],
)  # fmt: skip
def test_mass_changes_are_still_held(figures, rule) -> None:
    assert _rules(_figures(**figures)) == [rule]


def test_the_row_drop_compares_with_the_median_of_the_last_five_applied_uploads() -> None:
    # a full-extract district: one short night among its usual 200 rows does not lower
    # the baseline (median 200), so tonight's truncated 60 rows are held
    trips = evaluate(DEFAULT_THRESHOLDS, _figures(rows=60, recent_rows=(10, 200, 200, 200, 200)))
    assert [(t.rule, t.value, t.base) for t in trips] == [("max_row_drop_pct", 140, 200)]
    assert trips[0].message == (
        "has 60 data rows, 140 fewer than the usual 200 (median of the last 5 applied "
        "uploads), 70% fewer, limit 25%"
    )
    # an incremental district: last night's 300 changes (the start of the year) are not
    # its usual size (median 10 of 300, 12, 10, 9, 8): 2 changes tonight pass, where the
    # last upload alone as the base would have held them
    incremental = _figures(active_before=400, students_before=400, rows=2)
    assert _rules(replace(incremental, recent_rows=(300, 12, 10, 9, 8))) == []
    assert _rules(replace(incremental, recent_rows=(300,))) == ["max_row_drop_pct"]
    # only the last five count: the 1,000-row files before them are gone from the median
    assert usual_rows((50, 50, 60, 1000, 1000)) == 60
    assert usual_rows((100, 201)) == 151  # half up between the two middle ones
    assert usual_rows(()) is None


def test_nothing_is_held_before_the_district_has_an_applied_upload() -> None:
    first = _figures(deactivated=900, updated=100, rows=100, recent_rows=())
    assert evaluate(DEFAULT_THRESHOLDS, first) == []
    assert _rules(replace(first, recent_rows=(1000,))) == [
        "max_deactivated_pct",
        "max_row_drop_pct",
    ]


def test_the_message_names_the_figures() -> None:
    f = GuardFigures(9900, 9900, 4812, 0, 9900, (9900,))
    (trip,) = evaluate(DEFAULT_THRESHOLDS, f)
    assert trip.message == "deactivates 4,812 of 9,900 active students, 48.6%, limit 10%"
    assert (trip.value, trip.base, trip.pct, trip.limit, trip.min_count) == (
        4812, 9900, 48.6, 10, 25,
    )  # fmt: skip
    # a share just above the limit is never shown as the limit itself
    (trip,) = evaluate(DEFAULT_THRESHOLDS, GuardFigures(2500, 2500, 251, 0, 10, (10,)))
    assert trip.message.endswith(", 10.04%, limit 10%")
    (trip,) = evaluate(DEFAULT_THRESHOLDS, GuardFigures(100, 100, 30, 0, 30, (30,)))
    assert trip.message == "deactivates 30 of 100 active students, 30%, limit 10%"


def test_a_rule_at_zero_or_null_is_off() -> None:
    f = GuardFigures(100, 100, 100, 100, 1, (100,))
    assert len(evaluate(DEFAULT_THRESHOLDS, f)) == 3
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


# --- real nightly traffic at the README's defaults ------------------------------------

DAY = dt.timedelta(days=1)


def _nights(conn, *files: list[dict[str, str]]) -> list:
    """Each file as the upload of one night, in order."""
    return [
        run(conn, rows, key=f"D1-n{i}", received_at=T0 + i * DAY) for i, rows in enumerate(files)
    ]


def test_a_small_districts_ordinary_incremental_nights_are_applied(conn) -> None:
    load(conn, district_doc(licenses=100, guard=None))  # the defaults; no students yet
    created = [row(f"N{i}") for i in range(10)]
    renamed = [row(f"N{i}", password="", first_name="Renamed") for i in range(1, 5)]
    results = _nights(
        conn,
        created,  # the first upload: 10 students, the baseline
        [row("N0", "D", password=""), *renamed],  # 5 changes: 50% fewer rows
        [row("N5", "D", password="")],  # 1 of 9 active deactivated (11%), 1 row (90% fewer)
        [row("N1", password="", first_name="Again"), row("NEW1"), row("NEW2")],  # 1 of 12 upd.
    )
    assert [r.status for r in results] == [UploadStatus.PROCESSED] * 4
    assert [r.guard_trip for r in results] == [None] * 4
    assert results[1].counts["deactivated"] == 1 and results[1].counts["updated"] == 4
    assert results[2].guard_figures["usual_rows"] == 8  # median of 10 and 5, half up


def test_renaming_the_one_student_of_a_one_student_district_is_applied(conn) -> None:
    load(conn, district_doc(licenses=10, guard=None))
    _, second = _nights(
        conn,
        [row("ONLY")],
        [row("ONLY", password="", last_name="Married"), row("NEW1"), row("NEW2")],
    )
    assert second.status == UploadStatus.PROCESSED  # 1 of 1 student updated: 100%, 1 < 25
    assert second.counts["updated"] == 1 and students(conn)["ONLY"]["last_name"] == "Married"


@pytest.mark.parametrize(("size", "deactivate"), [(8, 1), (2, 2)])
def test_deactivating_a_few_students_of_a_small_district_is_applied(conn, size, deactivate) -> None:
    load(conn, district_doc(licenses=10, guard=None))
    ids = [f"N{i}" for i in range(size)]
    _, night = _nights(
        conn, [row(s) for s in ids], [row(s, "D", password="") for s in ids[:deactivate]]
    )
    assert night.status == UploadStatus.PROCESSED
    assert night.counts["deactivated"] == deactivate


def test_a_mass_deactivation_is_still_held(conn) -> None:
    _district(conn, n=100, guard=None)  # the defaults; 100 active, a baseline of 100 rows
    before = _state(conn)
    result = run(conn, _file(30, n=100), key="D1-k1", received_at=T0)
    assert result.status == UploadStatus.HELD
    assert result.guard_trip["message"] == ("deactivates 30 of 100 active students, 30%, limit 10%")
    assert _state(conn) == before
    # 24 of 100 (24%) is under the floor of 25: applied
    assert run(conn, _file(24, n=100), key="D1-k2", received_at=T0 + DAY).status == (
        UploadStatus.PROCESSED
    )


def test_a_truncated_full_extract_is_still_held(conn) -> None:
    _district(conn, n=200, guard=None, baseline=False)
    full = _file(0, n=200)
    assert [r.status for r in _nights(conn, *[full] * 5)] == [UploadStatus.PROCESSED] * 5
    before = _state(conn)
    truncated = run(conn, full[:60], key="D1-cut", received_at=T0 + 5 * DAY)
    assert truncated.status == UploadStatus.HELD
    assert truncated.guard_trip["rule"] == "max_row_drop_pct"
    assert truncated.guard_trip["message"] == (
        "has 60 data rows, 140 fewer than the usual 200 (median of the last 5 applied "
        "uploads), 70% fewer, limit 25%"
    )
    assert truncated.guard_figures["recent_rows"] == [200] * 5
    assert _state(conn) == before


def test_the_baseline_is_the_last_five_applied_uploads_only(conn) -> None:
    _district(conn, n=200, guard=None, baseline=False)
    full, few = _file(0, n=200), _file(0, n=200)[:10]
    # three nights of 10 changes, then three full extracts (more rows: nothing to hold)
    results = _nights(conn, few, few, few, full, full, full)
    assert [r.status for r in results] == [UploadStatus.PROCESSED] * 6
    # the first night is out of the window: the usual size is 200 (of six it would be 105)
    held = run(conn, full[:80], key="D1-80", received_at=T0 + 6 * DAY)
    assert held.guard_figures["recent_rows"] == [200, 200, 200, 10, 10]
    assert held.status == UploadStatus.HELD and held.guard_trip["trips"][0]["base"] == 200
    # neither a held nor a rejected upload is part of the baseline
    rejected = run(conn, b"nonsense\r\n1\r\n", key="D1-bad", received_at=T0 + 7 * DAY)
    assert rejected.status == UploadStatus.REJECTED
    after = run(conn, full, key="D1-after", received_at=T0 + 8 * DAY)
    assert after.status == UploadStatus.PROCESSED
    assert after.guard_figures["recent_rows"] == [200, 200, 200, 10, 10]


@pytest.mark.parametrize(("deactivate", "held"), [(2, False), (3, True)])
def test_deactivations_trip_above_ten_percent_of_active(conn, deactivate, held) -> None:
    _district(conn)  # the README's percentages (floor 1); 20 active students
    before = _state(conn)
    result = run(conn, _file(deactivate), key="D1-k1", received_at=T0)
    assert result.counts["deactivated"] == deactivate
    if held:
        assert result.status == UploadStatus.HELD
        assert result.guard_trip["rule"] == "max_deactivated_pct"
        assert (
            "deactivates 3 of 20 active students, 15%, limit 10%" in (result.guard_trip["message"])
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
    _district(conn)
    result = run(conn, _file(0, updated=renamed), key="D1-k1", received_at=T0)
    assert result.counts["updated"] == renamed
    assert (result.status == UploadStatus.HELD) is held
    if held:
        assert result.guard_trip["rule"] == "max_updated_pct"


@pytest.mark.parametrize(("rows", "held"), [(15, False), (14, True)])
def test_a_truncated_file_trips_the_row_drop_rule(conn, rows, held) -> None:
    _district(conn, guard={"max_deactivated_pct": 0, "max_updated_pct": 0, "min_count": 1})
    assert run(conn, _file(0), key="D1-k1", received_at=T0).status == UploadStatus.PROCESSED
    result = run(conn, _file(0)[:rows], key="D1-k2", received_at=T0 + dt.timedelta(days=1))
    assert (result.status == UploadStatus.HELD) is held
    if held:
        assert result.guard_trip["trips"][0]["value"] == 6
        assert result.guard_trip["trips"][0]["base"] == 20


def test_a_held_upload_is_not_applied_by_running_it_again(conn) -> None:
    _district(conn)
    before = _state(conn)
    rows = _file(10)
    assert run(conn, rows, key="D1-k1", received_at=T0).status == UploadStatus.HELD
    again = run(conn, rows, key="D1-k1", received_at=T0)
    assert again.status == UploadStatus.HELD and again.already_applied
    assert _state(conn) == before


def test_approve_applies_what_the_plan_says_against_the_current_state(conn) -> None:
    _district(conn)
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
    _district(conn)
    run(conn, _file(10), key="D1-k1", received_at=T0)
    with pytest.raises(ReviewRefused, match="not upload"):
        approve(conn, "D1-k1", csv_bytes(_file(9)), make_engine(), decided_by="a")


def test_discard_applies_nothing_and_is_recorded(conn) -> None:
    _district(conn)
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
    _district(conn)
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
    _district(conn)
    rows = [*_file(10), row("BAD", grade="15")]
    result = run(conn, rows, key="D1-k1", received_at=T0)
    assert result.status == UploadStatus.HELD
    assert result.error_codes == {"INVALID_GRADE": 1}
    assert len(db_uploads.load_errors(conn, result.upload_id)) == 1


def test_dry_run_reports_held(conn) -> None:
    _district(conn)
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
    _district(conn, mode="full_roster")
    before = _state(conn)
    # one school's export only: half of the students are absent
    result = run(conn, [row(sid, password="") for sid in _ids(10)], key="D1-k1", received_at=T0)
    assert result.status == UploadStatus.HELD
    assert result.deactivated_missing == 10
    assert "deactivates 10 of 20 active students, 50%" in result.guard_trip["message"]
    assert _state(conn) == before


# --- emails ---------------------------------------------------------------------------

HELD_TRIP = {
    "rule": "max_deactivated_pct",
    "message": "deactivates 30 of 100 active students, 30%, limit 10%",
    "trips": [
        {"rule": "max_deactivated_pct", "value": 30, "base": 100, "pct": 30.0, "limit": 10,
         "message": "deactivates 30 of 100 active students, 30%, limit 10%", "min_count": 25}
    ],
}  # fmt: skip


def _summary(status: str = "held", errors: int = 1, **kw) -> dict:
    return {
        "upload_id": 7, "district": "D1", "status": status, "rows": 100, "added": 0,
        "activated": 0, "deactivated": 30, "updated": 0, "unchanged": 70 - errors,
        "errors": errors, "error_codes": {"INVALID_GRADE": errors} if errors else {},
        "error_file": None, "deactivated_missing": 0, "guard": HELD_TRIP, **kw,
    }  # fmt: skip


def _district_email(summary: dict, error_file: str | None, **kw):
    from eams_pipeline.core.notifications import build_upload_email

    message = build_upload_email(
        district_code="D1", district_name="District D1", contacts=["a@d1.example.org"],
        sender="eams@example.com", summary=summary, error_file_path=error_file,
        upload_key="D1-k1", **kw,
    )  # fmt: skip
    return message["Subject"], " ".join(message.get_content().split())


def test_the_held_email_names_the_rule_and_its_figures() -> None:
    subject, text = _district_email(_summary(), "/errors/students_errors_7.csv")
    assert subject == "eAMS student update HELD for review: District D1 (D1), upload D1-k1"
    assert "NOTHING was applied" in text
    assert (
        "Why it was held: many students deactivated (max_deactivated_pct): the file "
        "deactivates 30 of 100 active students, 30%, limit 10%." in text
    )
    assert (
        "The error file with every error is on your SFTP site: /errors/students_errors_7.csv"
        in text
    )
    assert "the error file lists each error" in text


def test_the_held_email_mentions_an_error_file_only_when_there_is_one() -> None:
    _, text = _district_email(_summary(errors=0), None)
    assert "error file" not in text.lower()
    assert "deactivates 30 of 100 active students, 30%, limit 10%" in text
    # row errors but no file on the SFTP site (an upload an operator processed): not
    # pointed to a file that is not there
    _, text = _district_email(_summary(errors=1), None)
    assert "on your SFTP site:" not in text and "lists each error" not in text
    assert "The error file is not on your SFTP site; eAMS support can send it to you." in text


def test_the_approval_email_says_approved_after_review_and_by_whom() -> None:
    subject, text = _district_email(
        _summary("partially_processed"), "/errors/students_errors_7.csv", reviewed_by="alice"
    )
    assert subject.startswith(
        "eAMS student update PARTIALLY processed after review (1 row with errors)"
    )
    assert "HELD for review because it would change an unusual share of your students, then " \
        "APPROVED after review by alice and applied: all valid rows were applied" in text
    assert "the file deactivates 30 of 100 active students, 30%, limit 10%" in text
    subject, text = _district_email(_summary("processed", errors=0), None, reviewed_by="alice")
    assert subject.startswith("eAMS student update SUCCESSFUL after review:")
    assert "APPROVED after review by alice and applied: every row was applied." in text
    assert "error file" not in text.lower()
    # a clean upload that never was held says nothing of a review
    subject, text = _district_email(_summary("processed", errors=0, guard=None), None)
    assert "review" not in subject + text and "held" not in text.lower()


def test_the_discard_email_says_by_whom() -> None:
    subject, text = _district_email(_summary("discarded", errors=0), None, reviewed_by="bob")
    assert "DISCARDED after review" in subject
    assert "DISCARDED after review by bob" in text and "nothing of it was applied" in text


def test_the_revert_email_says_what_was_put_back() -> None:
    from eams_pipeline.core.notifications import build_revert_email

    message = build_revert_email(
        district_code="D1", district_name="District D1", contacts=["a@d1.example.org"],
        sender="eams@example.com", upload_key="D1-k1", reverted_by="carol",
        reverted_at=dt.datetime(2026, 1, 15, 9, 30, tzinfo=dt.UTC),
        counts={"restored": 12, "created_deactivated": 3},
    )  # fmt: skip
    assert message["Subject"] == "eAMS student update REVERTED: District D1 (D1), upload D1-k1"
    body = message.get_content()
    assert "Students restored as before                   12" in body
    assert "Students it had added, deactivated             3" in body
    text = " ".join(body.split())
    assert "REVERTED by carol on 2026-01-15 09:30 UTC" in text


@pytest.mark.parametrize(
    "trip",
    [
        {"rule": "max_deactivated_pct", "trips": [{"rule": "max_x", "message": "deactivates 1"}]},
        {"rule": "max_deactivated_pct",
         "trips": [{"rule": "max_deactivated_pct", "message": "deactivates Quixano, Marisol"}]},
        {"rule": "max_deactivated_pct", "trips": "deactivates"},
    ],
)  # fmt: skip
def test_a_guard_record_that_is_not_rules_and_figures_is_refused(trip) -> None:
    with pytest.raises(ValueError):
        _district_email(_summary(guard=trip), None)


def test_held_emails_carry_figures_and_commands_never_student_data() -> None:
    from eams_pipeline.core.notifications import build_held_operator_email

    summary = _summary()
    ops = build_held_operator_email(
        operators=["ops@example.com"], sender="eams@example.com", district_code="D1",
        district_name="District D1", upload_key="D1-k1", upload_id=7, summary=summary,
        guard_trip=HELD_TRIP,
    )  # fmt: skip
    body = ops.get_content()
    assert "HELD" in ops["Subject"] and ops["Subject"].endswith("upload D1-k1")  # the key, not 7
    assert "deactivates 30 of 100 active students, 30%, limit 10%" in body
    assert "eams uploads approve D1-k1" in body and "eams uploads discard D1-k1" in body


def test_who_was_told_of_the_hold_hears_the_decision(conn) -> None:
    from eams_pipeline.db.districts import get_district
    from eams_pipeline.db.export import order_licenses
    from eams_pipeline.services.notify import recorded_outcome_email

    existing = [existing_student(sid) for sid in _ids(20)]
    doc = district_doc(licenses=100, existing=existing, guard=SMALL)
    doc["failure_contacts"] = ["sis-vendor@vendor.example"]
    load(conn, doc)
    run(conn, _file(0), key="D1-k0", received_at=T0 - DAY)
    rows = _file(10)
    run(conn, rows, key="D1-k1", received_at=T0)
    approve(conn, "D1-k1", csv_bytes(rows), make_engine(), decided_by="alice")

    def email(key: str):
        upload = db_uploads.get_upload(conn, key)
        result = db_uploads.recorded_result(conn, upload, "D1")
        return recorded_outcome_email(
            get_district(conn, "D1"),
            upload,
            result,
            error_file=None,
            sender="e@x.example",
            licenses=order_licenses(conn, "D1"),
        )

    message, recipients = email("D1-k1")
    assert recipients == ("admin@d1.example.org", "sis-vendor@vendor.example")
    assert "SUCCESSFUL after review" in message["Subject"]
    assert "approved after review by alice" in " ".join(message.get_content().split()).lower()
    _, recipients = email("D1-k0")  # an ordinary night: the contacts only
    assert recipients == ("admin@d1.example.org",)
