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
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
import psycopg

from eams_pipeline import config
from eams_pipeline.db import apply as db_apply
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.snapshot import load_district_students, load_snapshot, lock_district
from eams_pipeline.errors import concat_errors, empty_errors, error_frame
from eams_pipeline.fingerprints import fingerprint_key
from eams_pipeline.passwords import PasswordHasher
from eams_pipeline.plan import OUTCOMES, Plan, make_plan
from eams_pipeline.reading import FileRejected, count_data_records, read_upload
from eams_pipeline.validation import normalise, validate_rows

log = logging.getLogger(__name__)

ACCEPTED, PARTIAL, REJECTED = "processed", "partially_processed", "rejected"
SUPERSEDED = "superseded"


@dataclass
class UploadResult:
    """What happened to an upload: the summary of SPEC §8 plus the errors to publish."""

    upload_id: int | None
    district: str
    status: str
    counts: dict[str, int]
    error_codes: dict[str, int]
    errors: pd.DataFrame
    file_error: FileRejected | None = None
    already_applied: bool = False
    superseded: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    hashed_passwords: int = 0

    @property
    def has_errors(self) -> bool:
        """Is there anything to put in an error file?"""
        return self.counts["errors"] > 0 or self.file_error is not None

    def summary(self, error_file: str | None) -> dict[str, object]:
        return {
            "upload_id": self.upload_id,
            "district": self.district,
            "status": self.status,
            **{k: self.counts[k] for k in ("rows", *OUTCOMES)},
            "error_codes": self.error_codes,
            "error_file": error_file if self.has_errors else None,
        }


@dataclass
class _Clock:
    timings: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - since
        return now


def process_upload(
    conn: psycopg.Connection,
    district_code: str,
    data: bytes,
    *,
    file_name: str = "students.csv",
    upload_key: str | None = None,
    received_at: dt.datetime | None = None,
    archive_path: str | None = None,
    dry_run: bool = False,
    allow_older: bool = False,
    hasher: PasswordHasher | None = None,
    secret: bytes | None = None,
    error_file_name: Callable[[int | None], str] | None = None,
) -> UploadResult:
    """Process one upload of a district (see the module docstring).

    `upload_key` identifies the upload across retries (the Dagster partition key); one is
    made from the time when absent. With `dry_run` every figure is computed and nothing is
    written. An upload received before the newest one already applied for the district is
    not applied (status `superseded`, its report computed as a dry run) unless
    `allow_older` is set.
    """
    clock = _Clock()
    t = time.perf_counter()
    received_at = received_at or dt.datetime.now(dt.UTC)
    content_sha256 = hashlib.sha256(data).hexdigest()
    key_for_fingerprints = fingerprint_key(secret if secret is not None else config.secret_key())
    hasher = hasher or PasswordHasher()

    with conn.transaction() as tx:
        district = lock_district(conn, district_code)
        upload = None
        if not dry_run:
            upload = db_uploads.ensure_upload(
                conn,
                district.district_id,
                upload_key or db_uploads.make_upload_key(district_code, received_at),
                file_name=file_name,
                content_sha256=content_sha256,
                received_at=received_at,
                archive_path=archive_path,
            )
            if upload.is_final:
                return _recorded(conn, upload, district_code)
        t = clock.lap("lock", t)

        # The district's students stream in from the database (a thread: the connection is
        # the thread's alone until .result()) while this thread parses and validates.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eams-snapshot") as pool:
            stored_students = pool.submit(load_district_students, conn, district)
            parsed, rejection = None, None
            try:
                parsed = read_upload(data)
            except FileRejected as exc:
                rejection = exc
            t = clock.lap("read", t)
            if parsed is not None:
                rows = normalise(parsed.rows)
                column_errors = validate_rows(parsed.rows)
                t = clock.lap("validate", t)
            students = stored_students.result()

        superseded = (
            upload is not None
            and rejection is None
            and not allow_older
            and db_uploads.newer_applied_exists(conn, district.district_id, upload)
        )
        writes = upload is not None and not superseded
        upload_id = upload.upload_id if upload is not None else None

        if rejection is not None:
            result = _rejected(district_code, upload_id, rejection, data)
        else:
            snapshot = load_snapshot(conn, district, rows, students)
            t = clock.lap("snapshot", t)
            plan = make_plan(
                rows,
                concat_errors([parsed.malformed, column_errors]),
                parsed.total_rows,
                snapshot,
                key_for_fingerprints,
            )
            t = clock.lap("plan", t)
            result = _from_plan(district_code, upload_id, plan)
            if writes:
                hashes, result.hashed_passwords = _hash(plan, hasher)
                t = clock.lap("hash", t)
                db_apply.apply_plan(conn, district.district_id, upload_id, plan, hashes)
                t = clock.lap("apply", t)

        if upload is None:
            raise psycopg.Rollback(tx)  # a dry run leaves no trace
        if superseded:
            result.status, result.superseded = SUPERSEDED, True
        db_apply.record_errors(conn, upload.upload_id, result.errors)
        db_apply.record_outcome(
            conn,
            upload.upload_id,
            result.status,
            result.counts,
            result.error_codes,
            error_file_name(upload.upload_id) if error_file_name and result.has_errors else None,
        )
        clock.lap("record", t)
    result.timings = clock.timings
    return result


def _hash(plan: Plan, hasher: PasswordHasher) -> tuple[pd.Series, int]:
    changed = plan.changes[plan.changes["password_changed"]]
    hashes = hasher.hash_many(changed["password"].tolist())
    return pd.Series(hashes, index=changed.index, dtype="str"), len(hashes)


def _status(counts: dict[str, int]) -> str:
    return PARTIAL if counts["errors"] else ACCEPTED


def _from_plan(district_code: str, upload_id: int | None, plan: Plan) -> UploadResult:
    return UploadResult(
        upload_id=upload_id,
        district=district_code,
        status=_status(plan.counts),
        counts=plan.counts,
        error_codes=plan.error_codes,
        errors=plan.errors,
    )


def _rejected(
    district_code: str, upload_id: int | None, exc: FileRejected, data: bytes
) -> UploadResult:
    rows = count_data_records(data)
    counts = {"rows": rows, **{k: 0 for k in OUTCOMES}, "errors": rows}
    errors = error_frame([0], [exc.line], [""], [""], [exc.code.value], [exc.message])
    return UploadResult(
        upload_id=upload_id,
        district=district_code,
        status=REJECTED,
        counts=counts,
        error_codes={exc.code.value: 1},
        errors=errors,
        file_error=exc,
    )


def _recorded(
    conn: psycopg.Connection, upload: db_uploads.UploadRow, district_code: str
) -> UploadResult:
    errors = db_uploads.load_errors(conn, upload.upload_id)
    return UploadResult(
        upload_id=upload.upload_id,
        district=district_code,
        status=upload.status,
        counts=upload.counts,
        error_codes=upload.error_codes,
        errors=errors if len(errors) else empty_errors(),
        already_applied=True,
    )
