"""When a check drop is taken (settle.decide_check): as incoming/'s file, on its own part of
the cursor, without the nightly processing time, never under an upload's key."""

from __future__ import annotations

import datetime as dt

from eams_pipeline.core.remote_files import RemoteFile
from eams_pipeline.core.settle import SensorState, decide, decide_check

T0 = dt.datetime(2026, 1, 14, 12, 0, tzinfo=dt.UTC)
FILE = RemoteFile(name="students.csv", size=120, mtime=1_768_000_000)


def test_a_check_settles_on_its_own_and_its_key_never_is_the_uploads() -> None:
    seen = decide([FILE], SensorState(), T0, district="D001", settle_seconds=30)
    checked = decide_check([FILE], SensorState(), T0, district="D001", settle_seconds=30)
    assert checked.request is None and checked.reason.startswith("check/: ")
    state = SensorState(
        watched=seen.state.watched,
        check_watched=checked.state.watched,
    )
    state = SensorState.from_cursor(state.to_cursor())  # the cursor keeps both parts
    later = T0 + dt.timedelta(seconds=30)
    upload = decide([FILE], state, later, district="D001", settle_seconds=30)
    check = decide_check(
        [FILE],
        state,
        later,
        district="D001",
        settle_seconds=30,
        upload_key=upload.request.upload_key,
    )
    assert upload.request is not None and check.request is not None
    assert upload.request.upload_key == "D001-20260114T120030000000Z"
    assert check.request.upload_key == "D001-20260114T120030000001Z"
    assert check.state.requested == check.request
    assert check.reason == "check/students.csv (120 bytes) settled: requesting check " + (
        "D001-20260114T120030000001Z"
    )
    # requested: nothing more while the same file is there
    again = decide_check(
        [FILE],
        SensorState(check_requested=check.request),
        later + dt.timedelta(seconds=60),
        district="D001",
        settle_seconds=30,
    )
    assert again.request is None and "already requested" in again.reason
    # gone (claimed): the check's part is reset
    gone = decide_check(
        [], SensorState(check_requested=check.request), later, district="D001", settle_seconds=30
    )
    assert gone.state == SensorState() and gone.reason == "no check/students.csv"


def test_a_check_does_not_wait_for_the_nightly_processing_time() -> None:
    state = SensorState(
        check_watched=decide_check(
            [FILE], SensorState(), T0, district="D001", settle_seconds=30
        ).state.watched
    )
    later = T0 + dt.timedelta(seconds=30)
    upload = decide(
        [FILE],
        SensorState(watched=state.check_watched),
        later,
        district="D001",
        settle_seconds=30,
        process_at=dt.time(2, 0),
    )
    assert upload.request is None  # an upload waits for 02:00
    check = decide_check([FILE], state, later, district="D001", settle_seconds=30)
    assert check.request is not None
