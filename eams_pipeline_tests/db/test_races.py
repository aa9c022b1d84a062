"""Races between uploads of different districts: the outcome is always a serial one."""

from __future__ import annotations

import threading
import time
from typing import Any

import pandas as pd
import psycopg
import pytest

from eams_pipeline.core.outcome import UploadResult
from eams_pipeline.db import district_snapshot, usernames
from eams_pipeline_tests.builders import district_doc, load, row, run, students


def _wait_until_blocked(watch: psycopg.Connection, pid: int, seconds: float = 20) -> None:
    """Until the backend `pid` waits for a lock (or fail)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        waiting = watch.execute(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if waiting and waiting[0]:
            return
        time.sleep(0.05)
    raise AssertionError("the second upload never waited for the first")


@pytest.mark.parametrize(
    "lock_limit",
    [256, 1],  # usernames locked one by one / a file claiming many locks them all
)
def test_two_districts_creating_the_same_username_end_as_if_serial(
    db_url: str, lock_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usernames, "USERNAME_LOCK_LIMIT", lock_limit)
    with psycopg.connect(db_url) as setup:
        load(setup, district_doc(code="D1"), district_doc(code="D2"))

    first_rows = [row("A1", username="Shared.Name"), row("A2")]
    second_rows = [row("B1", username="shared.name"), row("B2", school_code="101")]
    outcome: dict[str, Any] = {}

    with (
        psycopg.connect(db_url) as first,
        psycopg.connect(db_url) as second,
        psycopg.connect(db_url, autocommit=True) as watch,
    ):
        second_pid = second.info.backend_pid

        def second_upload() -> None:
            try:
                outcome["result"] = run(second, second_rows, district="D2")
            except Exception as exc:  # the failure is what the test reports
                outcome["error"] = exc

        # the first upload is applied but not committed: the test holds its transaction open
        with first.transaction():
            result_first = run(first, first_rows, district="D1")
            thread = threading.Thread(target=second_upload)
            thread.start()
            _wait_until_blocked(watch, second_pid)
        thread.join(timeout=60)
        assert not thread.is_alive()

        assert "error" not in outcome, f"the second upload failed: {outcome.get('error')!r}"
        result_second: UploadResult = outcome["result"]
        assert result_first.counts["added"] == 2
        assert result_second.counts["added"] == 1 and result_second.counts["errors"] == 1
        assert result_second.error_codes == {"USERNAME_TAKEN": 1}
        assert result_second.errors["student_id"].tolist() == ["B1"]
        assert set(students(watch, "D1")) == {"A1", "A2"}
        assert set(students(watch, "D2")) == {"B2"}


@pytest.mark.parametrize("probe", [True, False])
def test_taken_usernames_are_the_same_found_by_index_probes_or_by_the_planners_join(
    conn: psycopg.Connection, probe: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holders of a file's new usernames are looked up by one index probe each, or by
    the planner's own join when the file claims a good share of the table: the same
    USERNAME_TAKEN either way (another district's holder, in another case; a renamed
    student of the district itself; a student's own username is never taken)."""
    monkeypatch.setattr(
        usernames, "_probe_by_index", lambda _conn, _n: usernames._PROBE_SETTINGS if probe else {}
    )
    load(conn, district_doc(code="D1"), district_doc(code="D2"))
    assert (
        run(
            conn, [row("B1", username="Held.Name"), row("B2", username="b2.own")], district="D2"
        ).counts["added"]
        == 2
    )
    assert run(conn, [row("A1", username="own.one")], district="D1").counts["added"] == 1
    result = run(
        conn,
        [
            row("A1", username="own.one"),  # its own username
            row("A2", username="HELD.name"),  # D2's B1 holds it
            row("A3", username="fresh.name"),
        ],
        district="D1",
    )
    assert result.error_codes == {"USERNAME_TAKEN": 1}
    assert result.errors["line"].tolist() == [3]
    assert set(students(conn)) == {"A1", "A3"}


def test_local_settings_hold_inside_and_are_put_back_after(conn: psycopg.Connection) -> None:
    from eams_pipeline.db.connection import local_settings

    def setting(name: str) -> str:
        return conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]

    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '8MB'")
        with local_settings(conn, {"enable_hashjoin": "off", "work_mem": "64MB"}):
            assert (setting("enable_hashjoin"), setting("work_mem")) == ("off", "64MB")
        assert (setting("enable_hashjoin"), setting("work_mem")) == ("on", "8MB")


def test_the_holders_looked_up_beside_the_plan_are_the_ones_looked_up_before_it(
    conn: psycopg.Connection,
) -> None:
    """load_snapshot with an executor looks the holders up on it (the plan waits for them
    when it gets to USERNAME_TAKEN): the same frame as looked up in line."""
    from concurrent.futures import ThreadPoolExecutor

    from eams_pipeline.core.plan import match_rows
    from eams_pipeline.core.reading import read_upload
    from eams_pipeline.core.validation import normalise
    from eams_pipeline.db.districts import lock_district
    from eams_pipeline_tests.builders import csv_bytes

    load(conn, district_doc(code="D1"), district_doc(code="D2"))
    run(conn, [row("B1", username="Held.Name")], district="D2")
    rows = normalise(read_upload(csv_bytes([row("A1", username="held.NAME"), row("A2")])).rows)
    with conn.transaction():
        district = lock_district(conn, "D1")
        students = district_snapshot.load_district_students(conn, district)
        match = match_rows(rows, students)
        snap = district_snapshot.load_snapshot
        in_line = snap(conn, district, rows, students, match).taken_usernames
        with ThreadPoolExecutor(max_workers=1) as pool:
            beside = snap(conn, district, rows, students, match, ahead=pool)
            assert callable(beside.taken_usernames)
            found = beside.taken_usernames()
    assert in_line["username_lower"].tolist() == ["held.name"]
    pd.testing.assert_frame_equal(found, in_line)


def test_more_distinct_than_counts_a_prefix_first_and_all_values_when_it_must() -> None:
    from eams_pipeline.db.usernames import _more_distinct_than

    def series(values: list[str]) -> pd.Series:
        return pd.Series(values, dtype="str")

    assert not _more_distinct_than(series(["a", "b"]), 2)
    assert _more_distinct_than(series(["a", "b", "c"]), 2)
    # the prefix (16 x 3 values) holds only "a": the distinct ones come after it
    late = series(["a"] * 100 + ["b", "c"])
    assert _more_distinct_than(late, 2)
    assert not _more_distinct_than(series(["a"] * 100 + ["b"]), 2)
    assert not _more_distinct_than(series([]), 0)
