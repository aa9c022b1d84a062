"""Races between uploads of different districts: the outcome is always a serial one."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from eams_pipeline.core.outcome import UploadResult
from eams_pipeline.db import snapshot
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
    monkeypatch.setattr(snapshot, "USERNAME_LOCK_LIMIT", lock_limit)
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
