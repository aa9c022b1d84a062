"""The sensor's decisions as pure functions: settle window, nightly time, one run per upload."""

from __future__ import annotations

import datetime as dt

import pytest

from eams_pipeline.core.names import BadUploadKey, UploadRef
from eams_pipeline.core.remote_files import RemoteFile
from eams_pipeline.core.settle import SensorState, decide, due_time
from eams_pipeline.orchestration.district_sensors import sensor_name
from eams_pipeline.orchestration.partitions import district_tags, upload_tags

T0 = dt.datetime(2026, 1, 14, 20, 0, 0, tzinfo=dt.UTC)  # 14:00 in America/Chicago
SETTLE = 60


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def students(size: int = 100, mtime: int = 1_768_420_000) -> RemoteFile:
    return RemoteFile("students.csv", size, mtime)


def tick(files, state, seconds, **kwargs):
    kwargs.setdefault("settle_seconds", SETTLE)
    return decide(files, state, at(seconds), district="D001", **kwargs)


def test_a_growing_file_is_not_taken_until_it_stays_the_same_for_the_settle_window() -> None:
    d = tick([students(100)], SensorState(), 0)
    assert d.request is None and "settling" in d.reason
    d = tick([students(200)], d.state, 59)  # grew: the window starts again
    assert d.request is None
    d = tick([students(200)], d.state, 59 + SETTLE - 1)
    assert d.request is None
    d = tick([students(200)], d.state, 59 + SETTLE)
    assert d.request is not None
    assert d.request.size == 200
    assert d.request.upload_key == UploadRef.new("D001", at(59 + SETTLE)).key


def test_a_changed_modification_time_restarts_the_window() -> None:
    d = tick([students(mtime=1)], SensorState(), 0)
    d = tick([students(mtime=2)], d.state, SETTLE)
    assert d.request is None
    assert tick([students(mtime=2)], d.state, 2 * SETTLE).request is not None


def test_one_request_per_upload_and_a_new_one_for_the_next_upload() -> None:
    d = tick([students()], SensorState(), 0)
    first = tick([students()], d.state, SETTLE)
    assert first.request is not None
    again = tick([students()], first.state, SETTLE + 5)
    assert again.request is None and "already requested" in again.reason
    assert again.state == first.state

    gone = tick([], again.state, SETTLE + 10)  # the run claimed it
    assert gone.request is None and gone.state == SensorState()

    d = tick([students(size=300, mtime=5)], gone.state, SETTLE + 20)
    second = tick([students(size=300, mtime=5)], d.state, 2 * SETTLE + 20)
    assert second.request is not None
    assert second.request.upload_key != first.request.upload_key


def test_the_same_size_and_time_again_after_the_run_succeeded_is_a_new_upload() -> None:
    d = tick([students()], SensorState(), 0)
    first = tick([students()], d.state, SETTLE)
    assert first.request is not None
    # the next tick still sees an identical students.csv, but the run has claimed the first
    d = tick([students()], first.state, SETTLE + 1, requested_run_succeeded=True)
    assert d.request is None and "settling" in d.reason
    second = tick([students()], d.state, 2 * SETTLE + 1, requested_run_succeeded=True)
    assert second.request is not None
    assert second.request.upload_key != first.request.upload_key


def test_a_new_file_after_the_request_is_watched_afresh() -> None:
    d = tick([students()], SensorState(), 0)
    requested = tick([students()], d.state, SETTLE)
    d = tick([students(size=999)], requested.state, SETTLE + 1)
    assert d.request is None and d.state.requested is None
    assert d.state.watched is not None and d.state.watched.size == 999


def test_filepart_and_other_files_are_ignored() -> None:
    files = [RemoteFile("students.csv.filepart", 10, 1), RemoteFile("notes.txt", 3, 1)]
    d = tick(files, SensorState(), 0)
    d = tick(files, d.state, 10 * SETTLE)
    assert d.request is None
    assert "upload in progress: students.csv.filepart" in d.reason
    assert d.ignored == ("notes.txt",)
    d = tick([*files, students()], d.state, 11 * SETTLE)
    assert d.request is None  # students.csv just appeared: it settles first
    assert tick([*files, students()], d.state, 12 * SETTLE).request is not None


def test_a_zero_settle_window_takes_the_file_at_first_sight() -> None:
    assert tick([students()], SensorState(), 0, settle_seconds=0).request is not None


def test_nightly_district_waits_for_its_local_processing_time() -> None:
    nightly = {"process_at": dt.time(2, 0), "timezone": "America/Chicago"}
    d = tick([students()], SensorState(), 0, **nightly)  # 14:00 local
    d = tick([students()], d.state, SETTLE, **nightly)
    assert d.request is None and "nightly" in d.reason
    # 01:59 local the next day (07:59 UTC): not yet
    d = tick([students()], d.state, 11 * 3600 + 59 * 60, **nightly)
    assert d.request is None
    d = tick([students()], d.state, 12 * 3600, **nightly)  # 02:00 local
    assert d.request is not None


def test_a_file_settled_just_before_the_processing_time_goes_the_same_night() -> None:
    due = due_time(at(0).timestamp(), dt.time(14, 30), "America/Chicago")
    assert due == dt.datetime(2026, 1, 14, 20, 30, tzinfo=dt.UTC)
    due = due_time(at(0).timestamp(), dt.time(14, 0), "America/Chicago")
    assert due == at(0)  # exactly now counts


def test_processing_time_on_daylight_saving_days() -> None:
    chicago = "America/Chicago"
    # 2026-03-08: 02:00 CST jumps to 03:00 CDT; 02:30 does not exist that night
    before = dt.datetime(2026, 3, 7, 23, 0, tzinfo=dt.UTC).timestamp()
    due = due_time(before, dt.time(2, 30), chicago)
    assert due.astimezone(dt.UTC) == dt.datetime(2026, 3, 8, 8, 30, tzinfo=dt.UTC)
    # 2026-11-01: 01:30 happens twice; the first one (CDT) is taken
    before = dt.datetime(2026, 11, 1, 0, 0, tzinfo=dt.UTC).timestamp()
    due = due_time(before, dt.time(1, 30), chicago)
    assert due.astimezone(dt.UTC) == dt.datetime(2026, 11, 1, 6, 30, tzinfo=dt.UTC)


def test_cursor_round_trip_and_unreadable_cursor() -> None:
    d = tick([students()], SensorState(), 0)
    requested = tick([students()], d.state, SETTLE)
    for state in (d.state, requested.state):
        assert SensorState.from_cursor(state.to_cursor()) == state
    assert SensorState.from_cursor("not json") == SensorState()
    assert SensorState.from_cursor(None) == SensorState()


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        decide([], SensorState(), dt.datetime(2026, 1, 1), district="D001", settle_seconds=1)


@pytest.mark.parametrize("district", ["D001", "a_b-c", "X" * 32])
def test_upload_keys_are_safe_partition_keys_and_parse_back(district: str) -> None:
    when = dt.datetime(2026, 5, 11, 2, 0, 3, 123456, tzinfo=dt.UTC)
    ref = UploadRef.new(district, when)
    assert not any(bad in ref.key for bad in ("|", ",", "...", "/", " "))
    assert UploadRef.parse(ref.key) == ref
    assert ref.district == district and ref.received_at == when
    assert district_tags(district) == {"eams/district": district}
    assert upload_tags(ref) == {"eams/district": district, "eams/upload_key": ref.key}
    assert ref.processed_name == f"students_{ref.key}.csv"


@pytest.mark.parametrize("key", ["", "D001", "D001-2026", "D|1-20260511T020003123456Z"])
def test_malformed_upload_keys_are_refused(key: str) -> None:
    with pytest.raises(BadUploadKey):
        UploadRef.parse(key)


def test_sensor_names_differ_for_every_district_code() -> None:
    codes = ["D001", "d001", "D-1", "D_1", "D__1", "D_h1", "D-h1", "D_-1", "D-_1"]
    names = [sensor_name(c) for c in codes]
    assert names[0] == "sftp_D001" and names[2] == "sftp_D_h1"
    assert len(set(names)) == len(codes)
    assert all(name.replace("_", "").isalnum() for name in names)
