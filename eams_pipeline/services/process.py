"""One upload, start to finish: the code path shared by `eams process` and the Dagster job.

Two phases (README "Password hashing"):

1. before the district's lock, in short transactions of their own: parse (file-level
   checks), validate (column rules) and fingerprint the rows while the district's students
   and their `students_version` are read on a thread (one REPEATABLE READ snapshot); match
   every row to its stored student once; find the rows whose password is neither the
   stored student's (keyed fingerprint) nor already in the durable `password_hash_cache`;
   hash them with argon2id in batches of `Engine.hash_batch_size` on the worker threads
   and COMMIT each batch into the cache (and keep it in memory). A crash here loses at most
   the batch being hashed: a retry or re-run of the file finds the finished batches and
   hashes only the rest.
2. one transaction under the district's lock: snapshot -> plan -> guard -> the
   password_changed rows' hashes (phase 1's from memory, a stopped earlier run's from the
   cache by one set-based join; hash inline only those missing, i.e. changed in between)
   -> apply -> remove the used cache rows -> record. When `students_version` is still the
   one phase 1 read, phase 1's students, matches and fingerprints are used as they are;
   otherwise the students are read again. A failure anywhere here leaves the students as
   they were.

Phase 1 runs only when the connection is idle (the caller has no transaction open, so that
each batch can commit) and not for a dry run; otherwise every hash is computed inline, as
before. Processing an upload that was already applied changes nothing and returns what
was recorded the first time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import psycopg
from psycopg.pq import TransactionStatus

from eams_pipeline.config import DEFAULT_HASH_BATCH_SIZE, DEFAULT_HASH_CACHE_DAYS
from eams_pipeline.core.encoding import decode_upload
from eams_pipeline.core.errors import ErrorCode, concat_errors, error_frame
from eams_pipeline.core.fingerprints import (
    data_fingerprint,
    fingerprint_key,
    password_fingerprint,
    recognised_by_previous,
)
from eams_pipeline.core.guard import BASELINE_UPLOADS, GuardFigures, evaluate, trip_record
from eams_pipeline.core.names import make_upload_key
from eams_pipeline.core.outcome import (
    OUTCOMES,
    UploadResult,
    UploadStatus,
    status_of,
)
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.core.pauses import PauseTrip, pause_trip
from eams_pipeline.core.plan import (
    Plan,
    RowMatch,
    make_plan,
    match_rows,
    stored_password_fingerprints,
)
from eams_pipeline.core.reading import FileRejected, ParsedFile, count_data_records, read_upload
from eams_pipeline.core.validation import normalise, validate_rows
from eams_pipeline.db import apply as db_apply
from eams_pipeline.db import password_cache
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.connection import snapshot_transaction
from eams_pipeline.db.district_snapshot import (
    load_district_students,
    load_snapshot,
    load_students_versioned,
    students_version,
)
from eams_pipeline.db.districts import District, get_district, lock_district
from eams_pipeline.services.progress import Progress


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

    def __post_init__(self) -> None:
        # the name is recorded (text): a name that is not UTF-8 (a path decoded with
        # surrogate escapes) would fail only there, after the passwords were hashed
        try:
            self.file_name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"the file name {shown_file_name(self.file_name)} is not UTF-8: rename it"
            ) from None


def shown_file_name(name: str) -> str:
    """A file name for a message: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


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
    fingerprints, the password hasher, how many hashes commit together before the apply
    (a crash loses at most one batch) and how long unused cached hashes are kept.

    `previous_secrets`: the secrets before a rotation (EAMS_SECRET_KEY_PREVIOUS). A stored
    fingerprint made with one of them still says "unchanged password" (no hash, no
    history), and the apply moves it to `secret`."""

    secret: bytes
    hasher: PasswordHasher
    hash_batch_size: int = DEFAULT_HASH_BATCH_SIZE
    hash_cache_days: int = DEFAULT_HASH_CACHE_DAYS
    previous_secrets: tuple[bytes, ...] = ()

    @property
    def previous_keys(self) -> tuple[str, ...]:
        """The fingerprint keys of the previous secrets (the current one left out)."""
        return tuple(
            fingerprint_key(s) for s in dict.fromkeys(self.previous_secrets) if s != self.secret
        )


@dataclass
class _Clock:
    """Each step's seconds, and of them the CPU seconds of the thread that ran it: the rest
    is waiting (for PostgreSQL, for the hashing workers or for phase 1's threads)."""

    progress: Progress = field(default_factory=Progress)
    timings: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.progress.started(name)
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.timings[name] = self.timings.get(name, 0.0) + seconds
            self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - cpu
        self.progress.finished(name, seconds)  # not when the step failed


@dataclass
class _Read:
    """The file read and validated (phase 1, before the lock), for the district's encoding."""

    encoding: str
    text: bytes
    parsed: ParsedFile | None = None
    rejection: FileRejected | None = None
    rows: pd.DataFrame | None = None
    column_errors: pd.DataFrame | None = None


@dataclass
class Prepared:
    """What phase 1 leaves for the apply: the file read and validated, the district's
    students as read before the lock (with their version: the apply reuses them only when
    it finds the same version under the lock), each row's match to them and its
    password fingerprint, and how many passwords it hashed into the cache (in how long)."""

    read: _Read | None = None
    hashed: int = 0
    hash_seconds: float = 0.0
    content_sha256: str | None = None  # of the bytes read: the apply reuses `read` only for them
    students: pd.DataFrame | None = None
    students_version: int | None = None
    match: RowMatch | None = None  # core.plan.match_rows of read.rows and students
    password_fps: np.ndarray | None = None  # password_fingerprint of read.rows
    data_hashes: np.ndarray | None = None  # data_fingerprint of read.rows
    # recognised_by_previous of read.rows against `students` (None: no previous secret)
    recognised: np.ndarray | None = None
    cache_in_use: bool = False  # the district had hashes in the cache (a stopped run's)
    # the hashes phase 1 computed (and committed to the cache), by row of read.rows;
    # the apply takes them (and drops them here)
    hashes: pd.Series | None = None


def _read(upload: Upload, encoding: str, clock: _Clock) -> _Read:
    out = _parse(upload, encoding, clock)
    if out.parsed is not None:
        with clock.step("validate"):
            out.rows = normalise(out.parsed.rows)
            out.column_errors = validate_rows(out.parsed.rows)
    return out


def _parse(upload: Upload, encoding: str, clock: _Clock) -> _Read:
    """The file-level checks and the rows as parsed (not yet normalised or validated)."""
    out = _Read(encoding=encoding, text=upload.data, rejection=upload.rejection)
    with clock.step("read"):
        try:
            if out.rejection is None:
                out.text = decode_upload(upload.data, encoding)
                out.parsed = read_upload(out.text)
        except FileRejected as exc:
            out.rejection = exc
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()  # releases the GIL: runs beside the parsing


def prepare_upload(
    conn: psycopg.Connection,
    upload: Upload,
    engine: Engine,
    *,
    approve_hold: bool = False,
    progress: Progress | None = None,
    clock: _Clock | None = None,
    content_sha256: str | None = None,
) -> Prepared:
    """Phase 1 (module docstring): read and validate the file, and hash the passwords the
    apply will need into the durable cache, batch by committed batch, without the
    district's lock. Needs an idle connection. Does nothing for an upload already settled."""
    clock = clock or _Clock(progress or Progress())
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("prepare_upload commits each batch: the connection must be idle")
    with conn.transaction():
        district = get_district(conn, upload.district)
        record = db_uploads.get_upload(conn, upload.key) if upload.key else None
    if district is None or upload.rejection is not None:
        return Prepared()  # the apply phase reports it
    if record is not None and record.is_final and not (approve_hold and record.approvable):
        return Prepared()  # settled: the apply phase returns what was recorded
    # On two cores, beside this thread's parsing, validation and fingerprints (pandera and
    # the fingerprints' bytes objects hold the GIL), threads run what releases it: the
    # content's digest; the district's students streaming in (the connection is that
    # thread's alone until .result()), then each row's match to its stored student (Arrow
    # hash lookups). The fingerprints on a third thread measured slower (GIL contention).
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="eams-phase1") as pool:
        digest = pool.submit(_sha256, upload.data) if content_sha256 is None else None
        stored = pool.submit(_read_district_ahead, conn, district, engine)
        read = _parse(upload, district.encoding, clock)
        prepared = Prepared(read=read)
        if read.parsed is not None:
            with clock.step("validate"):
                read.rows = rows = normalise(read.parsed.rows)
                matched = pool.submit(_match, rows, stored)
                read.column_errors = validate_rows(read.parsed.rows)
            with clock.step("fingerprints"):
                prepared.password_fps, prepared.data_hashes = _fingerprints(rows, engine.secret)
        with clock.step("students"):  # what is left to wait of the students' read
            version, students, cached = stored.result()
        prepared.content_sha256 = content_sha256 or digest.result()
        if read.rows is None:
            return prepared
        with clock.step("match"):  # what is left to wait of it
            prepared.match = matched.result()
    prepared.students, prepared.students_version = students, version
    prepared.cache_in_use = cached
    with clock.step("hash_select"):
        todo = _to_hash_ahead(conn, district, read, prepared, engine)
    with clock.step("hash"):  # only the hashing and the commits of its batches
        start = time.perf_counter()
        prepared.hashes = _hash_batches(conn, district, todo, engine, clock.progress)
        prepared.hashed = len(prepared.hashes)
        prepared.hash_seconds = time.perf_counter() - start
    return prepared


def _read_district_ahead(
    conn: psycopg.Connection, district: District, engine: Engine
) -> tuple[int, pd.DataFrame, bool]:
    """Phase 1's database work, on a thread while the file is parsed: expire old cached
    hashes, read the students with their version, and whether the district has cached
    hashes at all (on a cache index full of rows the last apply deleted, and autovacuum
    has not cleaned yet, that probe alone can take a second)."""
    with conn.transaction():
        password_cache.expire(conn, engine.hash_cache_days)
    version, students = load_students_versioned(conn, district)
    with conn.transaction():
        cached = password_cache.has_cached(conn, district.district_id)
    return version, students, cached


def _match(rows: pd.DataFrame, stored: Future) -> RowMatch:
    """The rows matched to the district's students (core.plan.match_rows), once these are
    in."""
    return match_rows(rows, stored.result()[1])


def _fingerprints(rows: pd.DataFrame, secret: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The rows' password and data fingerprints."""
    key = fingerprint_key(secret)
    return password_fingerprint(rows["student_id"], rows["password"], key), data_fingerprint(rows)


def _to_hash_ahead(
    conn: psycopg.Connection,
    district: District,
    read: _Read,
    prepared: Prepared,
    engine: Engine,
) -> pd.DataFrame:
    """The passwords the apply is likely to need hashed (student_id, password_fp,
    password): on rows without a column-rule error, whose Student ID is on one row only,
    and whose fingerprint is neither the stored student's (prepared.students at
    prepared.match's positions; with a previous secret, or its fingerprint under that
    secret: prepared.recognised) nor cached (the cache is asked only when the district has
    any)."""
    assert read.rows is not None and read.column_errors is not None
    assert prepared.students is not None and prepared.match is not None
    assert prepared.password_fps is not None
    rows, fps, match = read.rows, prepared.password_fps, prepared.match
    # locally first: on a nightly file nearly every password is the stored one
    stored_fp, known = stored_password_fingerprints(prepared.students, match.positions)
    same = known & (stored_fp == fps)
    previous_keys = engine.previous_keys
    if previous_keys:  # only the rows whose fingerprint differs are fingerprinted again
        prepared.recognised = recognised_by_previous(
            rows["student_id"], rows["password"], fps, stored_fp, known, previous_keys
        )
        same |= prepared.recognised
    candidate = (
        rows["password"].notna().to_numpy(dtype=bool)
        & rows["student_id"].notna().to_numpy(dtype=bool)
        & ~match.repeated_ids
        & ~rows.index.isin(read.column_errors["row"].to_numpy())
        & ~same
    )
    picked = np.flatnonzero(candidate)
    keys = pd.DataFrame(
        {
            "k": np.arange(len(picked), dtype="int64"),
            "student_id": rows["student_id"].iloc[picked].to_numpy(),
            "password_fp": fps[picked],
            "password": rows["password"].iloc[picked].to_numpy(),
        },
        index=rows.index[picked],
    )
    if not prepared.cache_in_use:  # nothing cached for the district: hash every one
        return keys
    keys = keys.iloc[password_cache.to_hash(conn, district.district_id, keys).to_numpy()]
    for key in previous_keys:  # hashes cached before a rotation (a held file's)
        keys = _cached_under(conn, district, keys, key)
    return keys


def _cached_under(
    conn: psycopg.Connection, district: District, keys: pd.DataFrame, previous_key: str
) -> pd.DataFrame:
    """`keys` without those whose hash is cached under a previous secret's fingerprint: their
    cache rows move to the current fingerprint (committed), where the apply takes them."""
    if keys.empty:
        return keys
    old = password_fingerprint(keys["student_id"], keys["password"], previous_key)
    under_old = keys.assign(password_fp=old)
    missing = password_cache.to_hash(conn, district.district_id, under_old).to_numpy()
    cached = np.ones(len(keys), dtype=bool)
    cached[np.searchsorted(keys["k"].to_numpy(), missing)] = False
    if cached.any():
        with conn.transaction():
            password_cache.rekey(
                conn,
                district.district_id,
                pd.DataFrame(
                    {
                        "student_id": keys["student_id"].to_numpy()[cached],
                        "password_fp_before": old[cached],
                        "password_fp": keys["password_fp"].to_numpy()[cached],
                    }
                ),
            )
    return keys[~cached]


def _hash_batches(
    conn: psycopg.Connection,
    district: District,
    todo: pd.DataFrame,
    engine: Engine,
    progress: Progress,
) -> pd.Series:
    """Hash `todo`'s passwords into the cache; each batch commits. Returns the hashes,
    indexed as `todo` (by row)."""
    total, done = len(todo), 0
    finished: list[str] = []
    if total:
        progress.advanced("hash", 0, total)
    size = max(1, engine.hash_batch_size)
    for start in range(0, total, size):
        batch = todo.iloc[start : start + size]
        hashes = engine.hasher.hash_many(batch["password"].tolist())
        with conn.transaction():
            password_cache.store(
                conn,
                district.district_id,
                pd.DataFrame(
                    {
                        "student_id": batch["student_id"].to_numpy(),
                        "password_fp": batch["password_fp"].to_numpy(),
                        "password_hash": hashes,
                    }
                ),
            )
        finished += hashes
        done += len(batch)
        progress.advanced("hash", done, total)
    return pd.Series(finished, index=todo.index, dtype="str")


def process_upload(
    conn: psycopg.Connection,
    upload: Upload,
    engine: Engine,
    *,
    dry_run: bool = False,
    allow_older: bool = False,
    approve_hold: bool = False,
    error_file_name: Callable[[int | None], str] | None = None,
    progress: Progress | None = None,
    prepared: Prepared | None = None,
) -> UploadResult:
    """Process one upload of a district (see the module docstring).

    With `dry_run` every figure is computed and nothing is written (nor hashed); it takes
    no lock and reads one REPEATABLE READ snapshot when the connection is idle
    (the check drops' run and `eams process --dry-run`). An upload received
    before the newest one already applied for the district is not applied (status
    `superseded`, its report computed as a dry run) unless `allow_older` is set.
    `error_file_name(upload_id)` names the error file recorded with the outcome.

    The change guard (core.guard, the district's limits; core.pauses, its pauses: the
    upload's `received_at` in its time zone) runs on every accepted file: when
    a rule trips nothing is applied and the upload is recorded `held` with its counts,
    errors and the rule's figures. A held upload is settled: running it again returns what
    was recorded. `approve_hold` re-plans it against the current database and applies it
    without the guard (services.review.approve records who approved it).

    `progress` is told each step's start and end and the hashing's done/total; `prepared`
    is phase 1 already done by the caller (services.review.approve does it before its
    transaction), else it runs here when the connection is idle and this is no dry run.
    """
    clock = _Clock(progress or Progress())
    upload = _stamped(upload, dry_run=dry_run)
    prepared, content_sha256 = _phase_one(
        conn, upload, engine, prepared, dry_run=dry_run, approve_hold=approve_hold, clock=clock
    )
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction() as tx:
        with clock.step("lock"):
            if dry_run and idle:
                # one consistent snapshot of the district, without a lock
                snapshot_transaction(conn)
            # a dry run takes no lock (neither the district's nor the usernames'): it never
            # keeps an upload of the district waiting
            district = lock_district(conn, upload.district, lock=not dry_run)
            record = None if dry_run else _ensure_record(conn, district, upload, content_sha256)
            if record is not None and _settled(record, approve_hold, allow_older):
                return db_uploads.recorded_result(conn, record, upload.district)
        inputs = _inputs(conn, district, upload, prepared, content_sha256, clock)
        superseded_by = _newer_applied(conn, district, record, inputs, allow_older)
        result = _outcome(
            conn,
            district,
            record,
            upload,
            inputs,
            prepared,
            engine,
            clock,
            superseded=superseded_by is not None,
            approve_hold=approve_hold,
        )
        if record is None:
            raise psycopg.Rollback(tx)  # a dry run leaves no trace
        _record(conn, district, record, result, superseded_by, error_file_name, clock)
    return _timed(result, clock, prepared)


def _stamped(upload: Upload, *, dry_run: bool) -> Upload:
    """The upload with its time of arrival (default: now) and, unless a dry run, its key:
    one key for both phases (phase 1 looks up whether the upload is settled)."""
    received_at = upload.received_at or dt.datetime.now(dt.UTC)
    key = upload.key
    if key is None and not dry_run:
        key = make_upload_key(upload.district, received_at)
    return replace(upload, key=key, received_at=received_at)


def _phase_one(
    conn: psycopg.Connection,
    upload: Upload,
    engine: Engine,
    prepared: Prepared | None,
    *,
    dry_run: bool,
    approve_hold: bool,
    clock: _Clock,
) -> tuple[Prepared, str]:
    """Phase 1, unless the caller did it or it cannot run (a dry run, a transaction
    open), and the digest of the upload's content (phase 1 computes it beside the
    parsing)."""
    content_sha256 = None
    if prepared is None and not dry_run and conn.info.transaction_status == TransactionStatus.IDLE:
        prepared = prepare_upload(conn, upload, engine, approve_hold=approve_hold, clock=clock)
        content_sha256 = prepared.content_sha256
    return prepared or Prepared(), content_sha256 or _sha256(upload.data)


def _ensure_record(
    conn: psycopg.Connection, district: District, upload: Upload, content_sha256: str
) -> db_uploads.UploadRow:
    """The upload's record (made on its first run), under the district's lock."""
    return db_uploads.ensure_upload(
        conn,
        district.district_id,
        upload.key,
        file_name=upload.file_name,
        content_sha256=content_sha256,
        received_at=upload.received_at,
        archive_path=upload.archive_path,
    )


def _settled(record: db_uploads.UploadRow, approve_hold: bool, allow_older: bool) -> bool:
    """Whether the recorded upload stays as it is: settled, and not a held upload being
    approved (one that a newer upload superseded only with `allow_older`)."""
    approving = approve_hold and record.approvable
    if approving and record.was_held_superseded and not allow_older:
        approving = False  # a newer upload superseded it: allow_older decides
    return record.is_final and not approving


@dataclass
class _Inputs:
    """What the plan is made from: the file read and validated, the district's students
    and, from phase 1 when they still hold, each row's match to them, the rows'
    fingerprints and the passwords already hashed (by row). Emptied before the apply."""

    read: _Read | None
    students: pd.DataFrame | None = None
    match: RowMatch | None = None  # None: matched in the snapshot step
    password_fps: np.ndarray | None = None
    data_hashes: np.ndarray | None = None
    recognised: np.ndarray | None = None
    ahead: pd.Series | None = None


def _inputs(
    conn: psycopg.Connection,
    district: District,
    upload: Upload,
    prepared: Prepared,
    content_sha256: str,
    clock: _Clock,
) -> _Inputs:
    """Phase 1's file, fingerprints and hashes when it read these bytes in the district's
    encoding, with its students and matches when nothing was written to the district's
    students since (same version); otherwise read here."""
    read = prepared.read
    if read is None or read.encoding != district.encoding or (
        prepared.content_sha256 != content_sha256
    ):
        # The district's students stream in from the database (a thread: the connection
        # is the thread's alone until .result()) while this thread parses and validates.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eams-snapshot") as pool:
            stored_students = pool.submit(load_district_students, conn, district)
            read = _read(upload, district.encoding, clock)
            return _Inputs(read, stored_students.result())
    inputs = _Inputs(
        read,
        password_fps=prepared.password_fps,
        data_hashes=prepared.data_hashes,
        ahead=prepared.hashes,
    )
    if prepared.students is not None and prepared.students_version == students_version(
        conn, district.district_id
    ):
        # nothing was written to the district's students since phase 1 read them
        inputs.students, inputs.match = prepared.students, prepared.match
        inputs.recognised = prepared.recognised
    else:
        with clock.step("load"):
            inputs.students = load_district_students(conn, district)
    return inputs


def _newer_applied(
    conn: psycopg.Connection,
    district: District,
    record: db_uploads.UploadRow | None,
    inputs: _Inputs,
    allow_older: bool,
) -> str | None:
    """The newer upload of the district already applied that supersedes this one, if any
    (not for a dry run, a rejected file or with `allow_older`)."""
    if record is None or inputs.read.rejection is not None or allow_older:
        return None
    return db_uploads.newer_applied(conn, district.district_id, record)


def _outcome(
    conn: psycopg.Connection,
    district: District,
    record: db_uploads.UploadRow | None,
    upload: Upload,
    inputs: _Inputs,
    prepared: Prepared,
    engine: Engine,
    clock: _Clock,
    *,
    superseded: bool,
    approve_hold: bool,
) -> UploadResult:
    """The result of a rejected file, else of the plan: held when the change guard trips,
    applied when neither held nor superseded (nor a dry run)."""
    upload_id = record.upload_id if record is not None else None
    if inputs.read.rejection is not None:
        return _rejected(
            upload.district,
            inputs.read.text,
            upload_id,
            inputs.read.rejection,
            read=upload.rejection is None,
        )
    plan = _plan(conn, district, inputs, engine, clock, lock_claimed=record is not None)
    result = _from_plan(upload.district, upload_id, plan)
    if not superseded:
        _guard(conn, district, upload, upload_id, inputs.students, plan, result, approve_hold)
    if record is not None and not superseded and result.status != UploadStatus.HELD:
        plan = _released(plan, inputs, prepared)
        _apply(conn, district, record, plan, result, inputs, prepared, engine, clock)
    return result


def _plan(
    conn: psycopg.Connection,
    district: District,
    inputs: _Inputs,
    engine: Engine,
    clock: _Clock,
    *,
    lock_claimed: bool,
) -> Plan:
    """The snapshot under the lock and the plan made from it (`lock_claimed`: lock the
    usernames the file claims; not for a dry run)."""
    read = inputs.read
    # on threads: the rows' data fingerprints, unless phase 1 made them, while the
    # snapshot's queries wait on the database (they release the GIL); the holders of
    # the file's new usernames, looked up while the plan starts
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="eams-plan") as pool:
        hashing = None
        if inputs.data_hashes is None:
            hashing = pool.submit(data_fingerprint, read.rows)
        with clock.step("snapshot"):
            match = inputs.match or match_rows(read.rows, inputs.students)
            snapshot = load_snapshot(
                conn,
                district,
                read.rows,
                inputs.students,
                match,
                ahead=pool,
                lock_claimed=lock_claimed,
            )
        with clock.step("plan"):
            return make_plan(
                read.rows,
                concat_errors([read.parsed.malformed, read.column_errors]),
                read.parsed.total_rows,
                snapshot,
                match,
                fingerprint_key(engine.secret),
                full_roster=district.mode == "full_roster",
                password_fps=inputs.password_fps,
                data_hashes=inputs.data_hashes if hashing is None else hashing.result(),
                previous_keys=engine.previous_keys,
                recognised=inputs.recognised,
            )


def _guard(
    conn: psycopg.Connection,
    district: District,
    upload: Upload,
    upload_id: int | None,
    students: pd.DataFrame,
    plan: Plan,
    result: UploadResult,
    approve_hold: bool,
) -> None:
    """The change guard's figures (recorded with the result) and, unless approving a held
    upload, whether a rule trips: the result is then held. The district's pauses
    (core.pauses: the upload's received time in its time zone) come first."""
    figures = GuardFigures(
        active_before=int((students["status"] == "active").sum()),
        students_before=len(students),
        deactivated=plan.counts["deactivated"] + plan.deactivated_missing,
        updated=plan.counts["updated"],
        rows=plan.counts["rows"],
        recent_rows=db_uploads.recent_applied_rows(
            conn, district.district_id, upload_id, BASELINE_UPLOADS
        ),
    )
    result.guard_figures = figures.as_dict()
    if not approve_hold:
        result.guard_trip = trip_record(
            [
                *_pause_trips(conn, district, upload_id, upload.received_at),
                *evaluate(district.guard or {}, figures),
            ]
        )
    if result.guard_trip is not None:
        result.status = UploadStatus.HELD


def _pause_trips(
    conn: psycopg.Connection,
    district: District,
    upload_id: int | None,
    received_at: dt.datetime,
) -> list[PauseTrip]:
    """The district's pause rule that holds this upload, if any (core.pauses: the upload's
    received time in the district's time zone decides). First: it takes precedence."""
    if not district.pauses:
        return []
    trip = pause_trip(
        received_at,
        timezone=district.timezone,
        pauses=district.pauses,
        last_applied_at=db_uploads.last_applied_received_at(
            conn, district.district_id, upload_id
        ),
    )
    return [trip] if trip is not None else []


def _released(plan: Plan, inputs: _Inputs, prepared: Prepared) -> Plan:
    """Released before the apply's peak (its hashes and the rows it writes), as the apply
    reads none of them: the plan's decision columns, the file's rows as read, the
    district's students, the matches and fingerprints (the plan's changes carry what the
    apply needs). Phase 1's hashes stay for the apply."""
    inputs.read = inputs.students = inputs.match = None
    inputs.password_fps = inputs.data_hashes = inputs.recognised = None
    prepared.read = prepared.students = prepared.match = None
    prepared.password_fps = prepared.data_hashes = None
    return replace(plan, rows=plan.rows.iloc[:0])


def _apply(
    conn: psycopg.Connection,
    district: District,
    record: db_uploads.UploadRow,
    plan: Plan,
    result: UploadResult,
    inputs: _Inputs,
    prepared: Prepared,
    engine: Engine,
    clock: _Clock,
) -> None:
    """The hashes of the passwords the apply writes (phase 1's, the cache's, the rest
    hashed here), then the apply."""
    # the rows whose password the apply writes: hashed here; the apply removes their
    # cache rows (db/apply.py forget_used_hashes)
    changed = plan.changes.loc[
        plan.changes["password_changed"], ["student_id", "password_fp", "password"]
    ]
    with clock.step("hash_inline"):
        hashes, inline, result.cached_hashes = _hashes(
            conn, district.district_id, changed, engine.hasher, inputs.ahead
        )
        result.hashed_passwords = prepared.hashed + inline
        inputs.ahead = prepared.hashes = None  # in `hashes` now: not twice in memory
    with clock.step("apply"):
        result.rekeyed_passwords = db_apply.apply_plan(
            conn, district.district_id, record.upload_id, plan, hashes
        )


def _record(
    conn: psycopg.Connection,
    district: District,
    record: db_uploads.UploadRow,
    result: UploadResult,
    superseded_by: str | None,
    error_file_name: Callable[[int | None], str] | None,
    clock: _Clock,
) -> None:
    """Record the outcome with the upload (and its errors); an upload that was not
    superseded nor rejected supersedes the district's older held ones."""
    superseded = superseded_by is not None
    if superseded:
        result.status = UploadStatus.SUPERSEDED
        result.superseded_by = superseded_by
    with clock.step("record"):
        db_apply.record_errors(conn, record.upload_id, result.errors)
        db_apply.record_outcome(
            conn,
            record.upload_id,
            result.status,
            result.counts,
            result.error_codes,
            error_file_name(record.upload_id) if error_file_name and result.has_errors else None,
            deactivated_missing=result.deactivated_missing,
            guard_trip=result.guard_trip,
            guard_figures=result.guard_figures,
        )
        if result.status != UploadStatus.REJECTED and not superseded:
            result.superseded_held = db_uploads.supersede_held(conn, district.district_id, record)


def _timed(result: UploadResult, clock: _Clock, prepared: Prepared) -> UploadResult:
    """The result with each step's seconds and the hashing's rate."""
    result.timings = clock.timings
    result.cpu_timings = clock.cpu
    if prepared.hashed and prepared.hash_seconds > 0:
        result.hash_rate_per_s = prepared.hashed / prepared.hash_seconds
    return result


def _hashes(
    conn: psycopg.Connection,
    district_id: int,
    changed: pd.DataFrame,
    hasher: PasswordHasher,
    ahead: pd.Series | None,
) -> tuple[pd.Series, int, int]:
    """The argon2id hash of every `changed` row (the plan's password_changed changes:
    student_id, password_fp, password): those phase 1 of this run hashed (`ahead`, by row
    of the same read) from memory, the others from the cache (one join: hashed by an
    earlier run that stopped), the rest (changed since phase 1, or no phase 1) hashed
    here. Returns the hashes (indexed as `changed`), how many were hashed here and how
    many were hashed ahead (this run's phase 1 or an earlier one)."""
    # Arrow-backed text all along: 1M hashes never become 1M Python strings, nor twice
    if ahead is not None and len(ahead) and ahead.index.equals(changed.index):
        hashes = ahead.copy(deep=False)  # (filled in below: not the caller's Series)
    elif ahead is not None and len(ahead):
        hashes = ahead.reindex(changed.index)
    else:
        hashes = pd.Series(pd.NA, index=changed.index, dtype="str")
    rest = np.flatnonzero(hashes.isna().to_numpy())
    if len(rest):
        keys = pd.DataFrame(
            {
                "k": rest.astype("int64"),
                "student_id": changed["student_id"].to_numpy()[rest],
                "password_fp": changed["password_fp"].astype("int64").to_numpy()[rest],
            }
        )
        found = password_cache.take(conn, district_id, keys)
        if len(found):
            hashes.iloc[found["k"].to_numpy()] = found["password_hash"].to_numpy()
    missing = np.flatnonzero(hashes.isna().to_numpy())
    if len(missing):
        passwords = changed["password"].to_numpy()[missing].tolist()
        hashes.iloc[missing] = hasher.hash_many(passwords)
    return hashes, len(missing), len(changed) - len(missing)


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
