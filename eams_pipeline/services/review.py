"""Deciding a held upload: approve (apply it, re-planned against the current database) or
discard it (nothing applied). The same code for `eams uploads approve|discard` and the
Dagster re-execution with `approve_hold: true`.

Audit: the upload keeps its `guard_trip` (what tripped, with the figures of the night it
was held) and gains `decision` (approved | discarded), `decided_by` (the operator: `--by`,
else $USER; the Dagster run id in Dagster) and `decided_at` (the database's clock).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import psycopg
from psycopg.pq import TransactionStatus

from eams_pipeline.core.outcome import UploadResult, UploadStatus
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.districts import district_code, lock_district
from eams_pipeline.services.process import Engine, Prepared, Upload, prepare_upload, process_upload
from eams_pipeline.services.progress import Progress


class ReviewRefused(RuntimeError):
    """The upload cannot be approved or discarded (message says why)."""


def district_code_of(conn: psycopg.Connection, record: db_uploads.UploadRow) -> str:
    return district_code(conn, record.district_id)


def held_upload(conn: psycopg.Connection, upload_key: str) -> db_uploads.UploadRow:
    record = db_uploads.get_upload(conn, upload_key)
    if record is None:
        raise ReviewRefused(f"no upload {upload_key}")
    if not record.approvable:
        raise ReviewRefused(
            f"upload {upload_key} is {record.status}, not held: only a held upload can be "
            "approved or discarded"
        )
    return record


def approve(
    conn: psycopg.Connection,
    upload_key: str,
    data: bytes,
    engine: Engine,
    *,
    decided_by: str,
    allow_older: bool = False,
    error_file_name: Callable[[int | None], str] | None = None,
    progress: Progress | None = None,
) -> UploadResult:
    """Apply a held upload as it would have been applied, re-planned against the current
    database under the district's lock, without the change guard; record the approval in
    the same transaction. `data` is the upload's bytes (its archive copy or the file given
    to `eams process`): they must be the bytes recorded (sha256).

    The passwords are hashed first, before the district's lock (process.prepare_upload:
    those hashed the night the upload was held are still in the cache and not hashed
    again), when the connection is idle."""
    prepared: Prepared | None = None
    if conn.info.transaction_status == TransactionStatus.IDLE:
        with conn.transaction():
            record = held_upload(conn, upload_key)
            code = district_code_of(conn, record)
        prepared = prepare_upload(
            conn,
            Upload(district=code, data=data, key=upload_key),
            engine,
            approve_hold=True,
            progress=progress,
        )
    with conn.transaction():
        record = held_upload(conn, upload_key)
        code = district_code_of(conn, record)
        lock_district(conn, code)
        record = held_upload(conn, upload_key)  # again, under the lock
        if record.was_held_superseded and not allow_older:
            raise ReviewRefused(
                f"upload {upload_key} was superseded by a newer upload of {code}: approving it "
                "would apply older data over newer; pass --allow-older to do it anyway"
            )
        digest = hashlib.sha256(data).hexdigest()
        if record.content_sha256 not in (None, digest):
            raise ReviewRefused(
                f"the bytes given are not upload {upload_key} (sha256 {digest}, recorded "
                f"{record.content_sha256})"
            )
        result = process_upload(
            conn,
            Upload(
                district=code,
                data=data,
                key=upload_key,
                received_at=record.received_at,
                archive_path=record.archive_path,
            ),
            engine,
            allow_older=allow_older,
            approve_hold=True,
            error_file_name=error_file_name,
            progress=progress,
            prepared=prepared,
        )
        if result.status in (UploadStatus.PROCESSED, UploadStatus.PARTIALLY_PROCESSED):
            db_uploads.record_decision(conn, record.upload_id, "approved", decided_by)
    return result


def discard(conn: psycopg.Connection, upload_key: str, *, decided_by: str) -> UploadResult:
    """Mark a held upload discarded: nothing of it is applied, ever."""
    with conn.transaction():
        record = held_upload(conn, upload_key)
        code = district_code_of(conn, record)
        lock_district(conn, code)
        record = held_upload(conn, upload_key)
        db_uploads.set_status(conn, record.upload_id, UploadStatus.DISCARDED)
        db_uploads.record_decision(conn, record.upload_id, "discarded", decided_by)
        record = db_uploads.get_upload(conn, upload_key)
        assert record is not None
        return db_uploads.recorded_result(conn, record, code)
