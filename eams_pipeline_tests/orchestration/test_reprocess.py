"""Reprocessing historical uploads from the Dagster UI: the launchpad job reprocess_uploads
selects uploads (districts and local days, or keys, within the archive's retention) and
records them; the reprocess sensor turns each into its own run of upload_job, in order.
Real PostgreSQL, SFTP and SMTP servers, a real Dagster instance."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from eams_pipeline.core.names import UploadRef
from eams_pipeline.db.districts import UnknownDistrict
from eams_pipeline.db.upload_requests import pending_requests, record_sensor_request
from eams_pipeline.db.uploads import get_upload
from eams_pipeline.io.archive import Archive
from eams_pipeline.orchestration.partitions import DISTRICT_TAG, UPLOAD_KEY_TAG, upload_run_config
from eams_pipeline.orchestration.upload_request_sensor import REPROCESS_TAG
from eams_pipeline.services.reprocess import (
    ReprocessRefused,
    Selection,
    request_reprocessing,
    select_uploads,
)
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import (
    SID_A,
    Pipeline,
    clean_file,
    materialization,
    upload_key,
)

# -- the selection's text --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "nothing selected"),
        ({"districts": ["D001"], "received_from": "2026-02-30"}, "received_from: '2026-02-30'"),
        ({"districts": ["D001"], "received_to": "14/01/2026"}, "received_to: '14/01/2026'"),
        (
            {"districts": ["D001"], "received_from": "2026-01-15", "received_to": "2026-01-14"},
            "received_from 2026-01-15 is after received_to 2026-01-14",
        ),
        ({"received_from": "2026-01-14"}, "give districts"),
        ({"upload_keys": ["D001-2026"]}, "upload_keys: 'D001-2026' is not an upload key"),
    ],
)
def test_a_bad_selection_is_refused_naming_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ReprocessRefused, match=message):
        Selection.parse(**fields)


def test_a_selection_ignores_blanks_and_repeats() -> None:
    selection = Selection.parse(
        districts=[" D001", "D001", ""], received_from="2026-01-14", upload_keys=[" "]
    )
    assert selection == Selection(("D001",), dt.date(2026, 1, 14), None, ())


# -- the requests' table ---------------------------------------------------------------------


def test_a_sensors_request_is_recorded_once_and_needs_its_district(pipeline: Pipeline) -> None:
    key = UploadRef.new("D001", pipeline.clock.now).key
    conn = pipeline.conn
    assert record_sensor_request(conn, "D001", key, 10, 20) is True
    assert record_sensor_request(conn, "D001", key, 10, 20) is False  # a tick evaluated twice
    conn.commit()
    with pytest.raises(UnknownDistrict, match="district D404 is not in the database"):
        record_sensor_request(conn, "D404", UploadRef.new("D404", pipeline.clock.now).key, 1, 1)
    conn.rollback()
    assert record_sensor_request(conn, "D001", key, 10, 20) is False
    [request] = pending_requests(conn, 0, 10)
    assert (request.district, request.upload_key, request.file_size, request.file_mtime) == (
        "D001",
        key,
        10,
        20,
    )
    assert request.reprocess_run is None and request.allow_older is False


# -- what a request selects ------------------------------------------------------------------


def _archive(pipeline: Pipeline) -> Archive:
    return pipeline.resources()["archive"].get()  # type: ignore[union-attr]


def _archived(pipeline: Pipeline, code: str, at: dt.datetime, grade: str = "5") -> str:
    """An upload kept in the archive whose run died before it was applied (no uploads row)."""
    key = UploadRef.new(code, at).key
    _archive(pipeline).store(code, key, clean_file(grade=grade))
    return key


def test_days_are_the_districts_local_dates_and_retention_bounds_them(
    pipeline: Pipeline,
) -> None:
    chicago_14th_evening = dt.datetime(2026, 1, 15, 3, 0, tzinfo=dt.UTC)  # 21:00 on the 14th
    keys = [
        _archived(pipeline, "D001", dt.datetime(2026, 1, 13, 8, tzinfo=dt.UTC)),
        _archived(pipeline, "D001", dt.datetime(2026, 1, 14, 8, tzinfo=dt.UTC)),
        _archived(pipeline, "D001", chicago_14th_evening),
        _archived(pipeline, "D001", dt.datetime(2026, 1, 15, 8, tzinfo=dt.UTC)),
        _archived(pipeline, "D002", dt.datetime(2026, 1, 14, 8, tzinfo=dt.UTC)),
    ]
    now = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    selection = Selection.parse(
        districts=["D001"], received_from="2026-01-14", received_to="2026-01-14"
    )
    plan = select_uploads(pipeline.conn, _archive(pipeline), selection, now=now, archive_days=400)
    assert [c.upload_key for c in plan.selected] == keys[1:3]  # oldest first
    assert all(c.status is None and c.archived for c in plan.selected)

    # open ends: from the retention horizon on (those just past it reported as skipped)
    everything = Selection.parse(districts=["D001"])
    plan = select_uploads(pipeline.conn, _archive(pipeline), everything, now=now, archive_days=19)
    assert [c.upload_key for c in plan.selected] == keys[0:4] and plan.skipped == []
    plan = select_uploads(pipeline.conn, _archive(pipeline), everything, now=now, archive_days=18)
    assert [c.upload_key for c in plan.selected] == keys[1:4]
    assert [k for k, _ in plan.skipped] == [keys[0]]
    assert "received 2026-01-13, past the archive retention (18 days)" in plan.skipped[0][1]
    plan = select_uploads(pipeline.conn, _archive(pipeline), everything, now=now, archive_days=17)
    assert [c.upload_key for c in plan.selected] == keys[2:4]
    assert [k for k, _ in plan.skipped] == [keys[1]]  # the 13th: long gone, not looked at


def test_named_uploads_that_cannot_run_again_refuse_the_whole_request(
    pipeline: Pipeline,
) -> None:
    now = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    kept = _archived(pipeline, "D001", dt.datetime(2026, 1, 20, 8, tzinfo=dt.UTC))
    old = _archived(pipeline, "D001", dt.datetime(2025, 1, 20, 8, tzinfo=dt.UTC))
    gone = UploadRef.new("D001", dt.datetime(2026, 1, 21, 8, tzinfo=dt.UTC)).key
    stranger = UploadRef.new("D404", dt.datetime(2026, 1, 21, 8, tzinfo=dt.UTC)).key
    cases = [
        ([kept, gone], f"not in the archive nor in the database: {gone}"),
        ([kept, old], f"cannot be reprocessed: {old} (received 2025-01-20, past the archive"),
        ([kept, stranger], "no such district: D404"),
    ]
    for keys, message in cases:
        with pytest.raises(ReprocessRefused, match=message.replace("(", r"\(")):
            request_reprocessing(
                pipeline.conn,
                _archive(pipeline),
                Selection.parse(upload_keys=keys),
                requested_by="run-1",
                now=now,
                archive_days=365,
            )
    with pytest.raises(ReprocessRefused, match="no such district: D999"):
        select_uploads(
            pipeline.conn,
            _archive(pipeline),
            Selection.parse(districts=["D999"]),
            now=now,
            archive_days=365,
        )
    with pytest.raises(ReprocessRefused, match="holds 1 uploads, more than max_uploads=0"):
        request_reprocessing(
            pipeline.conn,
            _archive(pipeline),
            Selection.parse(upload_keys=[kept]),
            requested_by="run-1",
            now=now,
            archive_days=365,
            max_uploads=0,
        )
    count = pipeline.conn.execute("SELECT count(*) FROM upload_requests").fetchone()[0]
    assert count == 0  # a refused request records nothing


# -- from the launchpad to the runs ----------------------------------------------------------


def test_reprocessing_a_district_runs_each_upload_in_order_and_stays_as_of_safe(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    # night 1: applied (grade 5) and emailed; night 2: archived, its run died before the apply
    first_request, first = pipeline.sensor_run(instance, "D001", clean_file(grade="5"))
    assert first.success
    applied = upload_key(first_request)
    pipeline.clock.advance(86400)
    crashed = _archived(pipeline, "D001", pipeline.clock.now, grade="6")
    pipeline.clock.advance(86400)
    older = _archived(pipeline, "D001", dt.datetime(2026, 1, 13, 8, tzinfo=dt.UTC), grade="4")
    _archived(pipeline, "D002", pipeline.clock.now)  # another district: not selected
    assert len(pipeline.smtp.wait_for(1)) == 1

    result = pipeline.reprocess(instance, districts=["D001"], received_from="2026-01-13")
    assert result.success
    output = result.output_for_node("request_reprocessing")
    assert output == [older, applied, crashed]  # in the order they were received
    # the sensor: one run each, tagged with its upload, its district and the request
    tick = pipeline.dispatch()
    assert isinstance(tick, dg.SensorResult)
    requests = tick.run_requests
    assert [upload_key(r) for r in requests] == [older, applied, crashed]
    for r in requests:
        assert r.partition_key == "D001" and r.tags[DISTRICT_TAG] == "D001"
        assert r.tags[REPROCESS_TAG] == result.run_id
        assert r.run_config == upload_run_config(r.tags[UPLOAD_KEY_TAG])
        assert r.run_key == f"reprocess:{result.run_id}:{r.tags[UPLOAD_KEY_TAG]}"
    [add] = tick.dynamic_partitions_requests
    assert list(add.partition_keys) == ["D001"]
    again = pipeline.dispatch()  # nothing more after its cursor
    assert isinstance(again, dg.SkipReason)

    # the oldest, never applied, is older than night 1 (applied): superseded, not applied
    runs = [pipeline.launch(instance, r) for r in requests]
    assert materialization(runs[0], "upload_outcome")["status"] == "superseded"
    assert materialization(runs[0], "district_email")["sent"] is False
    # the applied one is not applied again, nor emailed again
    assert materialization(runs[1], "upload_outcome")["already_applied"] is True
    assert materialization(runs[1], "district_email")["sent"] is False
    # the one whose run died is applied now (its X row meets the student night 1 created),
    # and emailed
    assert materialization(runs[2], "upload_outcome")["status"] == "partially_processed"
    assert get_upload(pipeline.conn, crashed).status == "partially_processed"
    assert builders.students(pipeline.conn, "D001")[SID_A]["grade"] == "6"
    assert len(pipeline.smtp.wait_for(2)) == 2
    # the runs page finds every run of an upload by its tag, and a request's runs by theirs
    tagged = instance.get_runs(filters=dg.RunsFilter(tags={UPLOAD_KEY_TAG: applied}))
    assert {r.run_id for r in tagged} == {first.run_id, runs[1].run_id}
    by_request = instance.get_runs(filters=dg.RunsFilter(tags={REPROCESS_TAG: result.run_id}))
    assert len(by_request) == 3


def test_allow_older_applies_an_older_upload_over_a_newer_one(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    older = _archived(pipeline, "D001", pipeline.clock.now - dt.timedelta(days=1), grade="4")
    _, newer = pipeline.sensor_run(instance, "D001", clean_file(grade="6"))
    assert newer.success
    result = pipeline.reprocess(instance, upload_keys=[older], allow_older=True)
    assert result.success and result.output_for_node("request_reprocessing") == [older]
    [request] = pipeline.dispatch().run_requests
    assert request.run_config["ops"] == {"upload_outcome": {"config": {"allow_older": True}}}
    run = pipeline.launch(instance, request)
    assert materialization(run, "upload_outcome")["status"] == "partially_processed"
    assert builders.students(pipeline.conn, "D001")[SID_A]["grade"] == "4"


def test_a_refused_request_fails_its_run_naming_the_problem_and_records_nothing(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    result = pipeline.reprocess(instance, districts=["D001", "NOPE"])
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert "nothing reprocessed: no such district: NOPE" in failure.step_failure_data.error.message
    assert isinstance(pipeline.dispatch(), dg.SkipReason)


def test_each_location_takes_the_requests_of_its_own_districts(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    keys = [
        _archived(pipeline, code, pipeline.clock.now - dt.timedelta(hours=1))
        for code in ("D001", "D002")
    ]
    assert pipeline.reprocess(instance, upload_keys=keys).success
    mine = pipeline.dispatch(advance=False, serves=lambda code: code == "D002")
    assert [upload_key(r) for r in mine.run_requests] == [keys[1]]
    others = pipeline.dispatch(advance=False, serves=lambda code: code == "D003")
    assert isinstance(others, dg.SensorResult) and not others.run_requests
    assert others.cursor == mine.cursor  # both read past the two requests
