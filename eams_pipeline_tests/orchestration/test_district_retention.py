"""Retention: clear-text passwords do not stay on SFTP, and the retention job
removes old raw files, error files and archive copies, but nothing a received or held
upload needs. Decisions tested directly; the job against the real SFTP server."""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg
import pytest

from eams_pipeline.config import ConfigError, retention_settings
from eams_pipeline.core.upload_retention import (
    KnownUpload,
    StoredFile,
    archive_to_remove,
    error_files_to_remove,
    processed_to_remove,
)
from eams_pipeline.db.uploads import get_upload
from eams_pipeline.io.archive import Archive
from eams_pipeline.orchestration.upload_retention_job import build_retention_job
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import (
    Pipeline,
    clean_file,
    file_with_errors,
    materialization,
    upload_key,
)

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _upload(i: int, status: str, age_days: float, archived: bool = True) -> KnownUpload:
    return KnownUpload(i, f"D1-2026{i:04d}T000000000000Z", status, NOW - age_days * DAY, archived)


# -- the decisions -------------------------------------------------------------------------


def test_raw_files_go_once_finished_archived_and_old_enough() -> None:
    uploads = [
        _upload(1, "processed", 0),
        _upload(2, "rejected", 5),
        _upload(3, "received", 50),  # a run is on it, or crashed: keep
        _upload(4, "held", 50),  # waits for an operator: keep
        _upload(5, "partially_processed", 50, archived=False),  # not in the archive: keep
    ]
    by_key = {u.key: u for u in uploads}
    files = [StoredFile(f"students_{u.key}.csv", NOW) for u in uploads]
    files += [StoredFile("students_D1-20990101T000000000000Z.csv", NOW)]  # unknown upload
    files += [StoredFile("notes.txt", NOW - 999 * DAY)]
    assert processed_to_remove(files, by_key, NOW, 0) == [
        f"students_{uploads[0].key}.csv",
        f"students_{uploads[1].key}.csv",
    ]
    assert processed_to_remove(files, by_key, NOW, 3) == [f"students_{uploads[1].key}.csv"]


def test_a_rejected_file_never_archived_still_leaves_processed() -> None:
    # FILE_TOO_LARGE: claimed into processed/ but never downloaded, so never archived; its
    # outcome is final and nothing re-reads it, so its clear passwords must not stay
    too_large = _upload(6, "rejected", 0, archived=False)
    applied = _upload(7, "processed", 0, archived=False)  # re-runs would need it: keep
    by_key = {u.key: u for u in (too_large, applied)}
    files = [StoredFile(f"students_{u.key}.csv", NOW) for u in (too_large, applied)]
    assert processed_to_remove(files, by_key, NOW, 0) == [f"students_{too_large.key}.csv"]


def test_error_files_and_archive_copies_go_after_their_retention() -> None:
    uploads = [_upload(1, "partially_processed", 500), _upload(2, "held", 500)]
    uploads += [_upload(3, "rejected", 10)]
    by_id = {u.upload_id: u for u in uploads}
    files = [
        StoredFile("students_errors_1.csv", NOW - 91 * DAY),
        StoredFile("students_errors_2.csv", NOW - 91 * DAY),
        StoredFile("students_errors_3.csv", NOW - 89 * DAY),
        StoredFile("students_errors_77.csv", NOW - 900 * DAY),  # unknown upload: keep
        StoredFile(".students_errors_1.csv.tmp-ab", NOW - 900 * DAY),
    ]
    assert error_files_to_remove(files, by_id, NOW, 90) == ["students_errors_1.csv"]
    by_key = {u.key: u for u in uploads}
    keys = [*by_key, "D1-20200101T000000000000Z"]
    assert archive_to_remove(keys, by_key, NOW, 400) == [uploads[0].key]


def test_retention_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROCESSED", "ARCHIVE", "ERROR_FILE"):
        monkeypatch.delenv(f"EAMS_{name}_RETENTION_DAYS", raising=False)
    defaults = retention_settings()
    assert (defaults.processed_days, defaults.archive_days, defaults.error_file_days) == (
        0,
        400,
        90,
    )
    monkeypatch.setenv("EAMS_PROCESSED_RETENTION_DAYS", "500")
    with pytest.raises(ConfigError, match="must not be shorter"):
        retention_settings()
    monkeypatch.setenv("EAMS_PROCESSED_RETENTION_DAYS", "-1")
    with pytest.raises(ConfigError, match="0 or more"):
        retention_settings()


# -- on the real SFTP server ---------------------------------------------------------------


def test_the_raw_file_leaves_processed_and_a_rerun_works_from_the_archive(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    request, result = pipeline.sensor_run(instance, "D001", clean_file())
    key = upload_key(request)
    assert result.success
    assert pipeline.files("D001", "processed") == []
    assert materialization(result, "district_email")["raw_file_removed"] is True
    removed_at = pipeline.conn.execute(
        "SELECT raw_removed_at FROM uploads WHERE upload_key = %s", (key,)
    ).fetchone()[0]
    assert removed_at is not None

    again = pipeline.run_upload(instance, key)  # a re-run, e.g. a backfill
    assert again.success
    assert materialization(again, "upload_file")["source"].startswith("archive")
    assert materialization(again, "upload_outcome")["already_applied"] is True
    assert get_upload(pipeline.conn, key).status == "processed"


def _retention(pipeline: Pipeline, now: dt.datetime) -> dg.ExecuteInProcessResult:
    job = build_retention_job(clock=lambda: now)
    return job.execute_in_process(resources=pipeline.resources())


def _removed(result: dg.ExecuteInProcessResult) -> dict[str, list[str]]:
    return result.output_for_node("enforce_retention")


def test_the_retention_job_removes_only_what_it_may(
    pipeline: Pipeline, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAMS_PROCESSED_RETENTION_DAYS", "3")
    first, r1 = pipeline.sensor_run(instance, "D001", file_with_errors())
    pipeline.clock.advance(3600)
    second, r2 = pipeline.sensor_run(instance, "D001", file_with_errors())
    assert r1.success and r2.success
    held = upload_key(second)
    pipeline.conn.execute("UPDATE uploads SET status = 'held' WHERE upload_key = %s", (held,))
    pipeline.conn.commit()
    kept_raw = sorted(f"students_{upload_key(r)}.csv" for r in (first, second))
    assert pipeline.files("D001", "processed") == kept_raw  # 3 days not yet over
    errors = pipeline.files("D001", "errors")
    assert len(errors) == 2
    received = get_upload(pipeline.conn, upload_key(first)).received_at

    # a day later: nothing is old enough
    soon = _retention(pipeline, received + DAY)
    assert soon.success and _removed(soon) == {
        "processed": [],
        "errors": [],
        "reports": [],
        "archive": [],
    }

    # four days later: the first raw file goes; the held upload keeps its raw file
    later = _retention(pipeline, received + 4 * DAY)
    assert _removed(later)["processed"] == [f"/processed/{kept_raw[0]}"]
    assert pipeline.files("D001", "processed") == [kept_raw[1]]
    assert get_upload(pipeline.conn, upload_key(first)) is not None

    # error files: 90 days after they were written (their time on the SFTP server)
    old = (received - 100 * DAY).timestamp()
    for name in errors:
        os.utime(pipeline.user_dir("D001") / "errors" / name, (old, old))
    errs = _retention(pipeline, received + 5 * DAY)
    first_id = get_upload(pipeline.conn, upload_key(first)).upload_id
    assert _removed(errs)["errors"] == [f"/errors/students_errors_{first_id}.csv"]
    assert pipeline.files("D001", "errors") == [
        n for n in errors if n != f"students_errors_{first_id}.csv"
    ]

    # the archive: 400 days; the held upload's copy stays
    archive = Archive(pipeline.archive_dir, os.environ["EAMS_ARCHIVE_KEY"])
    assert len(archive.keys("D001")) == 2
    final = _retention(pipeline, received + 401 * DAY)
    assert len(_removed(final)["archive"]) == 1
    assert archive.keys("D001") == [held]
    # the op's output metadata lists what it removed
    [output] = [e for e in final.all_events if e.event_type_value == "STEP_OUTPUT"]
    shown = output.event_specific_data.metadata
    assert shown["removed_archive"].value == 1 and "removed" in shown
    builders.assert_license_invariant(pipeline.conn)
