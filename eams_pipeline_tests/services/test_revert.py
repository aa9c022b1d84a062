"""Reverting an upload on a real PostgreSQL: the pre-upload state of every
student comes back, licenses stay consistent, conflicts refuse unless cascaded."""

from __future__ import annotations

import datetime as dt

import pytest

from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.db.export import export_licenses, export_students
from eams_pipeline.services.revert import RevertRefused, revert_upload
from eams_pipeline_tests.builders import (
    assert_license_invariant,
    district_doc,
    existing_student,
    load,
    row,
    run,
    students,
)

T0 = dt.datetime(2026, 1, 14, 2, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture
def district(conn):
    existing = [existing_student(f"E{i}") for i in range(1, 6)]
    existing += [
        existing_student("R1", order="REG-D1"),
        existing_student("OFF", status="deactivated"),
    ]
    load(conn, district_doc(licenses=20, existing=existing))
    # give E3 a password (master data creates students without one)
    run(conn, [row("E3", password="first-password")], key="D1-k0", received_at=T0 - DAY)
    return conn


def _snapshot(conn) -> tuple:
    s = students(conn)
    return export_students(conn, "D1"), export_licenses(conn, "D1"), s


def _upload_1() -> list[dict[str, str]]:
    return [
        row("E1", password="", last_name="Renamed", email="e1@example.org"),
        row("E2", "D", password=""),
        row("OFF", "A", password=""),
        row("NEW1", "A"),
        row("NEW2", "X"),
        row("R1", "A", password=""),
        row("E3", password="second-password"),
        row("E4", password="", school_code="102"),
        row("E5", password=""),  # unchanged: not in the history, not touched
    ]


def test_revert_restores_every_student_and_the_licenses(district) -> None:
    conn = district
    exp_before, lic_before, s_before = _snapshot(conn)
    result = run(conn, _upload_1(), key="D1-k1", received_at=T0)
    assert result.counts == {
        "rows": 9, "added": 2, "activated": 1, "deactivated": 1, "updated": 4,
        "unchanged": 1, "errors": 0,
    }  # fmt: skip
    assert export_students(conn, "D1") != exp_before

    (done,) = revert_upload(conn, "D1-k1", reverted_by="carol")
    assert done.counts == {"restored": 6, "created_deactivated": 2}

    exp_after, lic_after, s_after = _snapshot(conn)
    created = {"NEW1", "NEW2"}
    assert [r for r in exp_after if r[1] not in created] == exp_before
    assert lic_after == lic_before
    for sid in created:  # kept (their usernames stay reserved), deactivated
        assert s_after[sid]["status"] == "deactivated"
    # the password hash too (never displayed, restored)
    assert {k: v for k, v in s_after.items() if k not in created} == s_before
    assert_license_invariant(conn)
    status, by, when = conn.execute(
        "SELECT status, reverted_by, reverted_at IS NOT NULL FROM uploads "
        "WHERE upload_key = 'D1-k1'"
    ).fetchone()
    assert (status, by, when) == ("reverted", "carol", True)
    with pytest.raises(RevertRefused, match="reverted"):
        revert_upload(conn, "D1-k1", reverted_by="carol")
    # a plain re-run of the reverted upload does not apply it again
    again = run(conn, _upload_1(), key="D1-k1", received_at=T0)
    assert again.status == UploadStatus.REVERTED
    assert _snapshot(conn)[2] == s_after


def test_a_later_upload_of_the_same_students_refuses_then_cascade(district) -> None:
    conn = district
    exp_before, lic_before, _s_before = _snapshot(conn)
    run(conn, _upload_1(), key="D1-k1", received_at=T0)
    run(conn, [row("E1", password="", first_name="Again"), row("NEW3")], key="D1-k2",
        received_at=T0 + DAY)  # fmt: skip
    run(conn, [row("E5", password="", first_name="Other")], key="D1-k3",
        received_at=T0 + 2 * DAY)  # fmt: skip
    with pytest.raises(RevertRefused, match="D1-k2") as refused:
        revert_upload(conn, "D1-k1", reverted_by="dan")
    assert "D1-k3" not in str(refused.value)  # it changed other students only
    assert conn.execute(
        "SELECT count(*) FROM uploads WHERE status = 'reverted'"
    ).fetchone()[0] == 0  # fmt: skip

    done = revert_upload(conn, "D1-k1", reverted_by="dan", cascade=True)
    assert [d.upload_key for d in done] == ["D1-k2", "D1-k1"]  # newest first
    exp_after, lic_after, _s_after = _snapshot(conn)
    created = {"NEW1", "NEW2", "NEW3"}
    e5 = next(r for r in exp_after if r[1] == "E5")
    assert e5[3] == "Other"  # D1-k3 stays applied
    assert [r for r in exp_after if r[1] not in created and r[1] != "E5"] == [
        r for r in exp_before if r[1] != "E5"
    ]
    assert lic_after == lic_before
    assert_license_invariant(conn)


def test_a_full_roster_upload_reverts_its_absent_students(conn) -> None:
    existing = [existing_student(f"E{i}") for i in range(1, 6)]
    load(conn, district_doc(licenses=10, existing=existing, mode="full_roster"))
    exp_before, lic_before, _ = _snapshot(conn)
    result = run(conn, [row("E1", password="")], key="D1-k1", received_at=T0)
    assert result.deactivated_missing == 4
    revert_upload(conn, "D1-k1", reverted_by="erin")
    exp_after, lic_after, _ = _snapshot(conn)
    assert (exp_after, lic_after) == (exp_before, lic_before)
    assert_license_invariant(conn)


def test_revert_is_refused_outside_the_retention_window(district) -> None:
    conn = district
    run(conn, _upload_1(), key="D1-k1", received_at=T0)
    conn.execute(
        "UPDATE uploads SET applied_at = now() - interval '31 days' + upload_id * interval '1 h'"
    )
    with pytest.raises(RevertRefused, match="window of 30 days"):
        revert_upload(conn, "D1-k1", reverted_by="f")
    assert revert_upload(conn, "D1-k1", reverted_by="f", retention_days=40)


def test_held_and_rejected_uploads_cannot_be_reverted(district) -> None:
    conn = district
    run(conn, b"nope\r\n1\r\n", key="D1-k1", received_at=T0)
    with pytest.raises(RevertRefused, match="rejected"):
        revert_upload(conn, "D1-k1", reverted_by="g")
