"""A revert's dry run does the revert's work and rolls it back; a revert confirmed after a
dry run is refused when the uploads to revert are no longer those shown."""

from __future__ import annotations

import datetime as dt

import pytest

from eams_pipeline.db.export import export_licenses, export_students
from eams_pipeline.services.revert import RevertRefused, revert_upload
from eams_pipeline_tests.builders import district_doc, existing_student, load, row, run

T0 = dt.datetime(2026, 1, 14, 2, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture
def district(conn):
    load(conn, district_doc(licenses=20, existing=[existing_student(f"E{i}") for i in (1, 2)]))
    run(conn, [row("E1", password="", first_name="One"), row("N1")], key="D1-k1", received_at=T0)
    conn.commit()
    return conn


def _state(conn) -> tuple:
    statuses = conn.execute("SELECT upload_key, status FROM uploads ORDER BY 1").fetchall()
    return export_students(conn, "D1"), export_licenses(conn, "D1"), statuses


def test_a_dry_run_reports_the_revert_and_changes_nothing(district) -> None:
    conn = district
    before = _state(conn)
    [dry] = revert_upload(conn, "D1-k1", reverted_by="ann", dry_run=True)
    assert _state(conn) == before
    assert (dry.counts, dry.available) == (
        {"restored": 1, "created_deactivated": 1}, {"ENT-D1": 1},
    )  # fmt: skip
    [done] = revert_upload(conn, "D1-k1", reverted_by="ann")
    assert done == dry
    assert _state(conn)[2] == [("D1-k1", "reverted")]


def test_a_confirmed_revert_is_refused_when_the_uploads_changed(district) -> None:
    conn = district
    shown = [r.upload_key for r in revert_upload(conn, "D1-k1", reverted_by="b", dry_run=True)]
    assert shown == ["D1-k1"]
    # between the dry run and the confirmation, an upload changes the same student
    run(conn, [row("E1", password="", first_name="Two")], key="D1-k2", received_at=T0 + DAY)
    conn.commit()
    before = _state(conn)
    with pytest.raises(RevertRefused, match="now D1-k2, D1-k1, not the D1-k1 shown before"):
        revert_upload(conn, "D1-k1", reverted_by="b", cascade=True, expected=shown)
    assert _state(conn) == before
