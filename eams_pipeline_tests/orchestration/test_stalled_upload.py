"""A client that stalls past the settle window and finishes writing after the claim (a
rename does not stop its open handle), with the real sensor, run, SFTP and SMTP servers.

The writer is a real SFTP client holding `incoming/students.csv` open; the loopback
server's test hooks let it finish writing at a precise point of the run: right after the
run read the end of the claimed file (the re-stat after the download sees it grow: the run
waits for it to settle and applies the complete file), or only after the upload was
archived and applied (the cut copy is rejected as FILE_TRUNCATED, and the complete raw
file is kept in processed/ with an operator alert instead of being removed)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import pytest

from eams_pipeline.core.master_data import SftpAccount
from eams_pipeline.db.uploads import get_upload
from eams_pipeline.io.archive import Archive
from eams_pipeline.io.sftp import SftpConnector
from eams_pipeline.orchestration.partitions import FILE_MTIME_TAG, FILE_SIZE_TAG
from eams_pipeline.orchestration.upload_retention_job import build_retention_job
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import (
    OPERATORS,
    Pipeline,
    district,
    materialization,
    password_env,
    upload_key,
)

STUDENTS = [f"S{i:03d}" for i in range(200)]


@dataclass
class Writer:
    """A district's SFTP client writing incoming/students.csv through one open handle."""

    whole: bytes
    cut: int
    finish: threading.Event
    done: threading.Event


@pytest.fixture
def writer(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Iterator[Writer]:
    """A full-roster D001 with 200 active students; its client has written the first 96% of
    the nightly file (all of them, unchanged), cut in the middle of a row, and waits."""
    monkeypatch.setenv("EAMS_SETTLE_SECONDS", "1")  # the run's wait for a changing file
    existing = [builders.existing_student(s, order="ENT-D001") for s in STUDENTS]
    builders.load(
        pipeline.conn,
        district("D001", pipeline.sftp)
        | {
            "mode": "full_roster",
            "existing_students": existing,
            "enterprise_order": {"number": "ENT-D001", "licenses": 500},
        },
    )
    pipeline.conn.commit()
    whole = builders.csv_bytes([builders.row(s, password="") for s in STUDENTS])
    cut = int(len(whole) * 0.96)
    assert not whole[:cut].endswith(b"\n")
    account = SftpAccount(
        host="127.0.0.1",
        port=pipeline.sftp.port,
        username="d001",
        host_key=pipeline.sftp.host_key_line,
        root="/",
        password_env=password_env("d001"),
    )
    transport, client = SftpConnector().connect(account)
    handle = client.open("/incoming/students.csv", "wb")
    handle.write(whole[:cut])
    handle.flush()
    w = Writer(whole, cut, threading.Event(), threading.Event())

    def finish_writing() -> None:  # what the stalled client does once it wakes up
        if w.finish.wait(120):
            handle.write(whole[cut:])
            handle.flush()
            handle.close()
        w.done.set()

    thread = threading.Thread(target=finish_writing, name="stalled-writer", daemon=True)
    thread.start()
    yield w
    w.finish.set()
    thread.join(30)
    client.close()
    transport.close()


async def _let_the_writer_finish(w: Writer) -> None:
    """On the server's loop: wake the writer and wait until its bytes are written (its
    requests are served by this same loop meanwhile)."""
    if not w.done.is_set():
        w.finish.set()
        await asyncio.get_running_loop().run_in_executor(None, w.done.wait, 60)


def _sensor_request(pipeline: Pipeline, instance: dg.DagsterInstance) -> dg.RunRequest:
    first = pipeline.tick(instance, "D001", None)
    pipeline.clock.advance(pipeline.settle)  # the client has stalled past the settle window
    return pipeline.request(pipeline.tick(instance, "D001", first.cursor))


def _run(pipeline: Pipeline, instance: dg.DagsterInstance, request: dg.RunRequest):
    stat = (int(request.tags[FILE_SIZE_TAG]), int(request.tags[FILE_MTIME_TAG]))
    return pipeline.run_upload(instance, upload_key(request), stat=stat)


def _statuses(pipeline: Pipeline) -> dict[str, int]:
    rows = pipeline.conn.execute(
        """SELECT status, count(*) FROM students s JOIN districts d USING (district_id)
           WHERE d.code = 'D001' GROUP BY status"""
    ).fetchall()
    return dict(rows)


def test_a_file_that_grows_after_the_download_is_read_again_once_settled(
    pipeline: Pipeline, instance: dg.DagsterInstance, writer: Writer
) -> None:
    request = _sensor_request(pipeline, instance)
    assert request.tags[FILE_SIZE_TAG] == str(writer.cut)

    async def after_read(path: bytes, offset: int, data: bytes) -> None:
        if b"/processed/" in path and not data:  # the run has read the end of the cut file
            await _let_the_writer_finish(writer)

    pipeline.sftp.after_read = after_read
    result = _run(pipeline, instance, request)
    assert result.success and writer.done.is_set()
    upload = get_upload(pipeline.conn, upload_key(request))
    assert upload.status == "processed" and upload.counts["rows"] == len(STUDENTS)
    assert upload.deactivated_missing == 0
    assert _statuses(pipeline) == {"active": len(STUDENTS)}
    meta = materialization(result, "upload_file")
    assert meta["bytes"] == len(writer.whole) and meta["waited_for_writer_seconds"] > 0
    archive = Archive(pipeline.archive_dir, pipeline_archive_key())
    stored = archive.load(str(archive.path_for("D001", upload_key(request))))
    assert stored == writer.whole
    # the raw file is the archived copy: it leaves processed/ as usual
    assert pipeline.files("D001", "processed") == []
    assert materialization(result, "district_email")["raw_file_removed"] is True


def test_a_file_finished_after_it_was_applied_is_rejected_cut_and_kept_whole(
    pipeline: Pipeline, instance: dg.DagsterInstance, writer: Writer
) -> None:
    request = _sensor_request(pipeline, instance)
    key = upload_key(request)

    async def on_open(path: bytes, pflags: int) -> None:
        if b"/errors/" in path:  # the run publishes the error file: archived, applied
            await _let_the_writer_finish(writer)

    pipeline.sftp.on_open = on_open
    result = _run(pipeline, instance, request)
    assert result.success and writer.done.is_set()

    # what was applied: the cut copy, rejected as a whole; nobody in the tail deactivated
    upload = get_upload(pipeline.conn, key)
    assert upload.status == "rejected" and upload.error_codes == {"FILE_TRUNCATED": 1}
    assert upload.deactivated_missing == 0
    assert _statuses(pipeline) == {"active": len(STUDENTS)}
    archive = Archive(pipeline.archive_dir, pipeline_archive_key())
    assert archive.load(str(archive.path_for("D001", key))) == writer.whole[: writer.cut]

    # the complete raw file is kept, not removed, and the operators are told once
    processed = pipeline.user_dir("D001") / "processed" / f"students_{key}.csv"
    assert processed.read_bytes() == writer.whole
    meta = materialization(result, "district_email")
    assert meta["raw_file_removed"] is False and "kept" in meta["why"]
    removed_at = pipeline.conn.execute(
        "SELECT raw_removed_at FROM uploads WHERE upload_key = %s", (key,)
    ).fetchone()[0]
    assert removed_at is None
    mails = pipeline.smtp.wait_for(2)
    district_mail = next(m for m in mails if "sis-admin@d001" in m["To"])
    assert "FILE_TRUNCATED" in district_mail.get_content()
    [ops] = [m for m in mails if m["To"] == OPERATORS]
    assert f"raw upload {key} kept in processed/" in ops["Subject"]
    body = " ".join(ops.get_content().split())
    assert f"Archived and processed: {writer.cut} bytes" in body
    assert f"Now in processed/: {len(writer.whole)} bytes" in body
    assert "incoming/students.csv" in body
    for secret in ("secret-pw", "LastS001"):
        assert secret not in ops.get_content()

    # the retention job keeps it too, and does not alert again
    retention = build_retention_job(clock=lambda: upload.received_at)
    done = retention.execute_in_process(resources=pipeline.resources())
    assert done.success and processed.read_bytes() == writer.whole
    assert len(pipeline.smtp.messages) == 2


def pipeline_archive_key() -> str:
    return os.environ["EAMS_ARCHIVE_KEY"]
