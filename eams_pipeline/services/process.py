"""One upload, start to finish: the code path shared by `eams process` and the Dagster job.

    lock the district -> parse (file-level checks) and validate (column rules) while the
    district's students load -> snapshot -> plan -> hash new passwords -> apply -> record

Everything that writes happens in one transaction: a failure anywhere leaves the
database as it was. Processing an upload that was already applied changes nothing and
returns what was recorded the first time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import psycopg

from eams_pipeline.core.encoding import decode_upload
from eams_pipeline.core.errors import ErrorCode, concat_errors, error_frame
from eams_pipeline.core.fingerprints import fingerprint_key
from eams_pipeline.core.guard import GuardFigures, evaluate, trip_record
from eams_pipeline.core.outcome import (
    OUTCOMES,
    UploadResult,
    UploadStatus,
    status_of,
)
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.core.plan import Plan, make_plan
from eams_pipeline.core.reading import FileRejected, count_data_records, read_upload
from eams_pipeline.core.validation import normalise, validate_rows
from eams_pipeline.db import apply as db_apply
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.districts import lock_district
from eams_pipeline.db.snapshot import load_district_students, load_snapshot


@dataclass(frozen=True)
class Upload:
    """One upload as it arrived. `key` identifies it across retries (the Dagster partition
    key); one is made from `received_at` (default: now) when absent."""

    district: str
    data: bytes
    file_name: str = "students.csv"
    key: str | None = None
    received_at: dt.datetime | None = None
    archive_path: str | None = None
    # a file-level rejection found before the content was read (FILE_TOO_LARGE: `data` is
    # then empty): the upload is recorded as rejected with that error, and 0 rows
    rejection: FileRejected | None = None


def file_too_large(size: int, limit: int) -> FileRejected:
    """FILE_TOO_LARGE for a file of `size` bytes (at least) when `limit` bytes are allowed."""
    return FileRejected(
        ErrorCode.FILE_TOO_LARGE,
        1,
        f"The file is too large: {size:,} bytes; at most {limit:,} bytes are accepted. "
        "Nothing was read or applied.",
    )


@dataclass(frozen=True)
class Engine:
    """What processing needs besides the database: the server secret that keys the password
    fingerprints, and the password hasher."""

    secret: bytes
    hasher: PasswordHasher


@dataclass
class _Clock:
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def process_upload(
    conn: psycopg.Connection,
    upload: Upload,
    engine: Engine,
    *,
    dry_run: bool = False,
    allow_older: bool = False,
    approve_hold: bool = False,
    error_file_name: Callable[[int | None], str] | None = None,
) -> UploadResult:
    """Process one upload of a district (see the module docstring).

    With `dry_run` every figure is computed and nothing is written. An upload received
    before the newest one already applied for the district is not applied (status
    `superseded`, its report computed as a dry run) unless `allow_older` is set.
    `error_file_name(upload_id)` names the error file recorded with the outcome.

    The change guard (core.guard, the district's limits) runs on every accepted file: when
    a rule trips nothing is applied and the upload is recorded `held` with its counts,
    errors and the rule's figures. A held upload is settled: running it again returns what
    was recorded. `approve_hold` re-plans it against the current database and applies it
    without the guard (services.review.approve records who approved it).
    """
    clock = _Clock()
    received_at = upload.received_at or dt.datetime.now(dt.UTC)

    with conn.transaction() as tx:
        with clock.step("lock"):
            district = lock_district(conn, upload.district)
            record = None
            if not dry_run:
                record = db_uploads.ensure_upload(
                    conn,
                    district.district_id,
                    upload.key or db_uploads.make_upload_key(upload.district, received_at),
                    file_name=upload.file_name,
                    content_sha256=hashlib.sha256(upload.data).hexdigest(),
                    received_at=received_at,
                    archive_path=upload.archive_path,
                )
                approving = approve_hold and record.approvable
                if approving and record.was_held_superseded and not allow_older:
                    approving = False  # a newer upload superseded it: allow_older decides
                if record.is_final and not approving:
                    return db_uploads.recorded_result(conn, record, upload.district)

        # The district's students stream in from the database (a thread: the connection is
        # the thread's alone until .result()) while this thread parses and validates.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eams-snapshot") as pool:
            stored_students = pool.submit(load_district_students, conn, district)
            parsed, rejection, text = None, upload.rejection, upload.data
            with clock.step("read"):
                try:
                    if rejection is None:
                        text = decode_upload(upload.data, district.encoding)
                        parsed = read_upload(text)
                except FileRejected as exc:
                    rejection = exc
            if parsed is not None:
                with clock.step("validate"):
                    rows = normalise(parsed.rows)
                    column_errors = validate_rows(parsed.rows)
            students = stored_students.result()

        superseded = (
            record is not None
            and rejection is None
            and not allow_older
            and db_uploads.newer_applied_exists(conn, district.district_id, record)
        )
        upload_id = record.upload_id if record is not None else None

        if rejection is not None:
            result = _rejected(
                upload.district, text, upload_id, rejection, read=upload.rejection is None
            )
        else:
            with clock.step("snapshot"):
                snapshot = load_snapshot(conn, district, rows, students)
            with clock.step("plan"):
                plan = make_plan(
                    rows,
                    concat_errors([parsed.malformed, column_errors]),
                    parsed.total_rows,
                    snapshot,
                    fingerprint_key(engine.secret),
                    full_roster=district.mode == "full_roster",
                )
            result = _from_plan(upload.district, upload_id, plan)
            if not superseded:
                figures = GuardFigures(
                    active_before=int((snapshot.students["status"] == "active").sum()),
                    students_before=len(snapshot.students),
                    deactivated=plan.counts["deactivated"] + plan.deactivated_missing,
                    updated=plan.counts["updated"],
                    rows=plan.counts["rows"],
                    last_applied_rows=db_uploads.last_applied_rows(
                        conn, district.district_id, upload_id
                    ),
                )
                result.guard_figures = figures.as_dict()
                if not approve_hold:
                    result.guard_trip = trip_record(evaluate(district.guard or {}, figures))
                if result.guard_trip is not None:
                    result.status = UploadStatus.HELD
            if record is not None and not superseded and result.status != UploadStatus.HELD:
                with clock.step("hash"):
                    hashes, result.hashed_passwords = _hash(plan, engine.hasher)
                with clock.step("apply"):
                    db_apply.apply_plan(conn, district.district_id, record.upload_id, plan, hashes)

        if record is None:
            raise psycopg.Rollback(tx)  # a dry run leaves no trace
        if superseded:
            result.status = UploadStatus.SUPERSEDED
        with clock.step("record"):
            db_apply.record_errors(conn, record.upload_id, result.errors)
            db_apply.record_outcome(
                conn,
                record.upload_id,
                result.status,
                result.counts,
                result.error_codes,
                error_file_name(record.upload_id)
                if error_file_name and result.has_errors
                else None,
                deactivated_missing=result.deactivated_missing,
                guard_trip=result.guard_trip,
                guard_figures=result.guard_figures,
            )
            if result.status != UploadStatus.REJECTED and not superseded:
                result.superseded_held = db_uploads.supersede_held(
                    conn, district.district_id, record
                )
    result.timings = clock.timings
    return result


def _hash(plan: Plan, hasher: PasswordHasher) -> tuple[pd.Series, int]:
    changed = plan.changes[plan.changes["password_changed"]]
    hashes = hasher.hash_many(changed["password"].tolist())
    return pd.Series(hashes, index=changed.index, dtype="str"), len(hashes)


def _from_plan(district_code: str, upload_id: int | None, plan: Plan) -> UploadResult:
    return UploadResult(
        upload_id=upload_id,
        district=district_code,
        status=status_of(plan.counts),
        counts=plan.counts,
        error_codes=plan.error_codes,
        errors=plan.errors,
        deactivated_missing=plan.deactivated_missing,
    )


def _rejected(
    district_code: str, data: bytes, upload_id: int | None, exc: FileRejected, *, read: bool
) -> UploadResult:
    # a file refused before reading (FILE_TOO_LARGE) is not counted: its records are unknown
    rows = count_data_records(data) if read else 0
    counts = {"rows": rows, **{k: 0 for k in OUTCOMES}, "errors": rows}
    errors = error_frame([0], [exc.line], [""], [""], [exc.code.value], [exc.message])
    return UploadResult(
        upload_id=upload_id,
        district=district_code,
        status=UploadStatus.REJECTED,
        counts=counts,
        error_codes={exc.code.value: 1},
        errors=errors,
        file_error=exc,
    )
