"""The upload pipeline as five assets partitioned by district; a run processes one upload,
named by its run config (the ``upload_ref`` resource) and tags (see :mod:`.partitions`).

    upload_file     claim incoming/students.csv by an atomic rename to processed/, keep an
                    encrypted archive copy of the raw bytes (the basis of every re-run)
    upload_outcome  validate and apply: process_upload, the same code as `eams process`
    error_report    publish errors/students_errors_<upload id>.csv (temporary name, rename);
                    metadata: counts, errors per code, a preview
    change_report   publish reports/students_changes_<upload key>.csv: what the applied
                    upload changed, one line per changed field (and, once it is reverted,
                    ..._revert.csv: what the revert put back); metadata: lines per change
    district_email  the outcome email of SPEC §7 to the district's contacts

No asset passes data through an IO manager (the raw upload holds passwords): each reads
what it needs from the archive or the database. Every step can run again: a re-execution
or a backfill reads the archive, not SFTP; an upload already applied is not applied again
(process_upload returns what was recorded); an upload older than one already applied is
not applied over it unless the run config says ``allow_older: true``. Every
materialization's metadata names its upload (``upload_key``).
"""

import datetime as dt
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pandas as pd
from pydantic import Field

from eams_pipeline import config as eams_config
from eams_pipeline.core.error_file import render_error_file
from eams_pipeline.core.names import (
    ERRORS,
    PARTIAL_SUFFIX,
    PROCESSED,
    REPORTS,
    UPLOAD_NAME,
    UploadRef,
    change_report_name,
    error_file_name,
)
from eams_pipeline.core.notifications import build_held_operator_email
from eams_pipeline.core.outcome import COUNT_KEYS, UploadResult, UploadStatus
from eams_pipeline.core.settle import listed
from eams_pipeline.core.upload_retention import raw_removable
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.districts import District, district_code, get_district
from eams_pipeline.db.export import order_licenses
from eams_pipeline.io.sftp import SettledRead, SftpFileChangingError
from eams_pipeline.orchestration.decisions import decision_text, tag_upload_runs
from eams_pipeline.orchestration.partitions import (
    DISTRICTS,
    FILE_MTIME_TAG,
    FILE_SIZE_TAG,
    runs_of_upload,
    upload_tags,
)
from eams_pipeline.orchestration.resources import (
    ArchiveResource,
    DatabaseResource,
    EngineResource,
    SftpResource,
    SmtpResource,
    UploadResource,
)
from eams_pipeline.orchestration.upload_retention_job import (
    alert_raw_kept,
    known_uploads,
    remove_raw_upload,
)
from eams_pipeline.services.change_report import build_change_report, reports_of
from eams_pipeline.services.license_alerts import alert_if_licenses_low
from eams_pipeline.services.notify import recorded_outcome_email
from eams_pipeline.services.process import Upload, file_too_large, process_upload
from eams_pipeline.services.progress import LineProgress
from eams_pipeline.services.review import ReviewRefused, approve

GROUP = "eams_uploads"
# the outcomes told to the failure contacts as well (master data `failure_contacts`)
PREVIEW_ROWS = 20
# the run's log gets a hashing progress line at most this often (and every step's end)
PROGRESS_LOG_SECONDS = 5.0


class ApplyConfig(dg.Config):
    allow_older: bool = Field(
        default=False,
        description=(
            "Apply this upload even though a newer upload of the district was already applied "
            "(an explicit operator decision: it rolls students back to this file's data)."
        ),
    )
    approve_hold: bool = Field(
        default=False,
        description=(
            "Apply this upload although the change guard held it: re-planned against the "
            "current database, recorded as approved (eams uploads approve does the same)."
        ),
    )
    approved_by: str = Field(
        default="",
        description="Who approves (recorded in uploads.decided_by); default: the run id.",
    )


class EmailConfig(dg.Config):
    resend: bool = Field(
        default=False,
        description="Email the district again although this upload's email was already sent.",
    )


def _ref(context: dg.AssetExecutionContext, upload_ref: UploadResource) -> UploadRef:
    """The run's upload (run config), checked against its partition (the district) and tags."""
    ref = upload_ref.ref()
    if context.partition_key != ref.district:
        raise dg.Failure(
            f"upload {ref.key} is of district {ref.district}, not of this run's partition "
            f"{context.partition_key}",
            allow_retries=False,
        )
    tags = context.run.tags
    expected = upload_tags(ref)
    for tag, value in expected.items():
        if tags.get(tag) not in (None, value):
            raise dg.Failure(
                f"run tag {tag}={tags[tag]} does not match upload {ref.key}", allow_retries=False
            )
    missing = {tag: value for tag, value in expected.items() if tag not in tags}
    if missing:  # e.g. launched from the launchpad: tag the run for the runs page's filters
        context.instance.add_run_tags(context.run.run_id, missing)
    return ref


def _names(ref: UploadRef) -> dict[str, object]:
    """The metadata naming the upload, on every materialization."""
    return {
        "upload_key": ref.key,
        "district": ref.district,
        "received_at": ref.received_at.isoformat(),
    }


def _load_district(db: DatabaseResource, code: str) -> District:
    with db.connect() as conn:
        district = get_district(conn, code)
    if district is None:
        raise dg.Failure(f"district {code} is not in the database (eams setup load)")
    return district


@contextmanager
def district_session(sftp: SftpResource, district: District) -> Iterator:
    """An SFTP session of the district's account (a step fails when it has none)."""
    if district.sftp is None:
        raise dg.Failure(f"district {district.code} has no SFTP account in its master data")
    with sftp.session(district.sftp) as session:
        yield session


def expected_stat(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
) -> tuple[int, int] | None:
    """The size and mtime the sensor saw settle (run tags), if the run has them."""
    tags = context.run.tags
    try:
        return int(tags[FILE_SIZE_TAG]), int(tags[FILE_MTIME_TAG])
    except (KeyError, ValueError):
        return None


@dg.asset(
    partitions_def=DISTRICTS,
    group_name=GROUP,
    kinds={"sftp"},
    description="The raw upload: claimed from incoming/ into processed/ and archived encrypted.",
)
def upload_file(
    context: dg.AssetExecutionContext,
    upload_ref: UploadResource,
    db: DatabaseResource,
    sftp: SftpResource,
    archive: ArchiveResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    ref = _ref(context, upload_ref)
    store = archive.get()
    archived = store.path_for(ref.district, ref.key)
    processed_rel = f"{PROCESSED}/{ref.processed_name}"
    limit = eams_config.max_upload_bytes()
    waited = 0.0
    if archived.exists():
        data = store.load(str(archived))
        source = "archive (re-run: SFTP not read)"
        context.log.info(f"upload {ref.key} is already archived; SFTP is not read")
    else:
        with db.connect() as conn:
            recorded = db_uploads.get_upload(conn, ref.key)
        if recorded is not None and recorded.status == UploadStatus.CHECKED:
            raise dg.Failure(
                f"{ref.key} is a check drop, not an upload: nothing of it is ever applied "
                "(its run is one of check_upload)",
                allow_retries=False,
            )
        if recorded is not None and recorded.is_final:
            # settled without an archive copy (FILE_TOO_LARGE: never downloaded), its raw
            # file possibly removed since: nothing is read again, upload_outcome reports it
            context.log.info(f"upload {ref.key} is already {recorded.status}; not read again")
            return dg.MaterializeResult(
                metadata={
                    **_names(ref),
                    "source": f"recorded outcome ({recorded.status}); not archived",
                    "processed_path": processed_rel,
                }
            )
        district = _load_district(db, ref.district)
        with district_session(sftp, district) as session:
            session.ensure_dirs()
            if session.exists(processed_rel):
                source = f"{processed_rel} (claimed by an earlier attempt)"
                context.log.info(f"upload {ref.key} was already claimed: {processed_rel}")
            else:
                _claim(context, session, ref, processed_rel)
                source = f"incoming/{UPLOAD_NAME}"
            got = read_claimed(context, session, processed_rel, limit)
            if got.data is None:
                # claimed (out of incoming/, kept in processed/) but never downloaded:
                # recorded as rejected here; upload_outcome reports what was recorded
                return _too_large(context, db, engine, ref, district, got.stat.size, limit, source)
            data, waited = got.data, got.waited
        store.store(ref.district, ref.key, data)
    digest = store.sha256(data)
    return dg.MaterializeResult(
        metadata={
            **_names(ref),
            "bytes": dg.MetadataValue.int(len(data)),
            "sha256": digest,
            "source": source,
            "processed_path": processed_rel,
            "archive_path": dg.MetadataValue.path(str(archived)),
            **({"waited_for_writer_seconds": dg.MetadataValue.float(waited)} if waited else {}),
        }
    )


# how long a run waits for a claimed file that is still being written, in settle windows
WRITER_WAIT_SETTLES = 15


def read_claimed(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    session,
    processed_rel: str,
    limit: int,
) -> SettledRead:
    """The claimed file, read once it is no longer being written (a client's handle opened
    before the claim still writes into it): stat before and after the download, and the
    size and time the sensor saw settle; when they differ, wait until it has not changed
    for EAMS_SETTLE_SECONDS and read it again (at most WRITER_WAIT_SETTLES windows, then
    the step fails and is retried)."""
    settle = eams_config.settle_seconds()
    try:
        got = session.read_settled(
            processed_rel,
            expected=expected_stat(context),
            settle_seconds=settle,
            max_wait_seconds=WRITER_WAIT_SETTLES * max(settle, 1),
            max_bytes=limit,
        )
    except SftpFileChangingError as exc:
        raise dg.Failure(str(exc)) from exc
    if got.seen:
        context.log.warning(
            f"{processed_rel} changed after the sensor saw it settle ({'; '.join(got.seen[:3])})"
            f": a client was still writing it. Read again once unchanged for {settle}s "
            f"(waited {got.waited:.0f}s): {got.stat.size} bytes"
        )
    return got


def _too_large(
    context: dg.AssetExecutionContext,
    db: DatabaseResource,
    engine: EngineResource,
    ref: UploadRef,
    district: District,
    size: int,
    limit: int,
    source: str,
) -> dg.MaterializeResult:
    context.log.warning(
        f"upload {ref.key} is {size} bytes, above EAMS_MAX_UPLOAD_BYTES={limit}: not "
        f"downloaded nor archived (it stays in {PROCESSED}/{ref.processed_name}); recorded "
        "as rejected with FILE_TOO_LARGE"
    )
    upload = Upload(
        district=ref.district,
        data=b"",
        file_name=UPLOAD_NAME,
        key=ref.key,
        received_at=ref.received_at,
        rejection=file_too_large(size, limit),
    )
    with db.connect() as conn:
        process_upload(
            conn,
            upload,
            engine.get(),
            error_file_name=lambda upload_id: _error_path(district.sftp_root, upload_id),
        )
    return dg.MaterializeResult(
        metadata={
            **_names(ref),
            "bytes": dg.MetadataValue.int(size),
            "too_large": dg.MetadataValue.bool(True),
            "source": source,
            "processed_path": f"{PROCESSED}/{ref.processed_name}",
        }
    )


def _claim(context: dg.AssetExecutionContext, session, ref: UploadRef, processed_rel: str) -> None:
    """Rename incoming/students.csv to processed/, if it is the file the sensor saw."""
    listing = session.list_incoming()
    others = [f.name for f in listing if f.name != UPLOAD_NAME]
    if others:
        partial = [n for n in others if n.endswith(PARTIAL_SUFFIX)]
        context.log.info(
            f"left alone in incoming/: {listed(others, 10)}"
            + (f" ({len(partial)} upload(s) in progress)" if partial else "")
        )
    expected = expected_stat(context)
    current = next((f for f in listing if f.name == UPLOAD_NAME), None)
    if expected is None:
        raise dg.Failure(
            f"upload {ref.key} is neither archived nor in {PROCESSED}/; only the sensor's run "
            f"(tags {FILE_SIZE_TAG}, {FILE_MTIME_TAG}) may claim incoming/{UPLOAD_NAME}"
        )
    if current is None:
        raise dg.Failure(
            f"incoming/{UPLOAD_NAME} is gone and upload {ref.key} is neither in {PROCESSED}/ "
            "nor archived: the file was removed before it could be claimed"
        )
    if (current.size, current.mtime) != expected:
        raise dg.Failure(
            f"incoming/{UPLOAD_NAME} changed after the sensor requested upload {ref.key} "
            f"(size/mtime {expected[0]}/{expected[1]} then, {current.size}/{current.mtime} "
            "now); nothing was claimed: the sensor requests a new run for the new file",
            allow_retries=False,
        )
    session.claim(UPLOAD_NAME, ref.processed_name)
    context.log.info(f"claimed incoming/{UPLOAD_NAME} as {processed_rel}")


@dg.asset(
    partitions_def=DISTRICTS,
    group_name=GROUP,
    deps=[upload_file],
    kinds={"postgres"},
    description="The upload validated and applied to the MY Access database (process_upload).",
)
def upload_outcome(
    context: dg.AssetExecutionContext,
    config: ApplyConfig,
    upload_ref: UploadResource,
    db: DatabaseResource,
    archive: ArchiveResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    ref = _ref(context, upload_ref)
    store = archive.get()
    path = store.path_for(ref.district, ref.key)
    archive_path: str | None = str(path)
    if path.exists():
        data = store.load(str(path))
    else:
        # a file refused before download (FILE_TOO_LARGE) is recorded, never archived
        with db.connect() as conn:
            recorded = db_uploads.get_upload(conn, ref.key)
        if recorded is None or not recorded.is_final:
            raise dg.Failure(f"upload {ref.key} is not archived: materialize upload_file first")
        data, archive_path = b"", None
    root = _load_district(db, ref.district).sftp_root
    upload = Upload(
        district=ref.district,
        data=data,
        file_name=UPLOAD_NAME,
        key=ref.key,
        received_at=ref.received_at,
        archive_path=archive_path,
    )
    # each step's end and the hashing's done/total, rate and ETA in the run's log, in one
    # entry per PROGRESS_LOG_SECONDS (every entry is an event written to Dagster's storage)
    progress = LineProgress(
        context.log.info, interval=PROGRESS_LOG_SECONDS, batch_seconds=PROGRESS_LOG_SECONDS
    )
    with progress, db.connect() as conn:
        record = db_uploads.get_upload(conn, ref.key)
        conn.rollback()  # end that read: processing commits in a transaction of its own
        if config.approve_hold and record is not None and record.approvable:
            try:
                result = approve(
                    conn,
                    ref.key,
                    data,
                    engine.get(),
                    decided_by=config.approved_by or f"dagster run {context.run.run_id}",
                    allow_older=config.allow_older,
                    error_file_name=lambda upload_id: _error_path(root, upload_id),
                    progress=progress,
                )
            except ReviewRefused as exc:
                raise dg.Failure(str(exc), allow_retries=False) from exc
            context.log.info(f"held upload {ref.key} approved: {result.status}")
        else:
            result = process_upload(
                conn,
                upload,
                engine.get(),
                allow_older=config.allow_older,
                error_file_name=lambda upload_id: _error_path(root, upload_id),
                progress=progress,
            )
    decision = _report_outcome(context, db, ref)
    if decision:
        context.log.info(f"upload {ref.key}: {decision}")
    if result.status == UploadStatus.HELD:
        context.log.warning(
            f"upload {ref.key} HELD by the change guard, nothing applied: "
            f"{(result.guard_trip or {}).get('message')}. Approve: eams uploads approve "
            f"{ref.key} (or re-execute with upload_outcome: {{config: {{approve_hold: true}}}}); "
            f"discard: eams uploads discard {ref.key}"
        )
    if result.superseded_held:
        context.log.info(
            f"held upload(s) {', '.join(result.superseded_held)} of {ref.district} are now "
            "superseded by this one (approving them needs allow_older)"
        )
    if result.already_applied:
        context.log.info(f"upload {ref.key} was already applied; nothing applied again")
    if result.status == UploadStatus.SUPERSEDED:
        context.log.warning(
            f"upload {ref.key} is older than upload {result.superseded_by} of {ref.district}, "
            "already applied: it "
            "was NOT applied (students are not rolled back); its report was regenerated. "
            "To apply it anyway, re-execute with config upload_outcome: {allow_older: true}."
        )
    return dg.MaterializeResult(
        metadata={
            **_names(ref),
            "upload_id": dg.MetadataValue.int(result.upload_id or 0),
            "district": ref.district,
            "status": str(result.status),
            "decision": decision or "(none)",
            "already_applied": dg.MetadataValue.bool(result.already_applied),
            "allow_older": dg.MetadataValue.bool(config.allow_older),
            **{k: dg.MetadataValue.int(int(result.counts[k])) for k in COUNT_KEYS},
            "deactivated_missing": dg.MetadataValue.int(result.deactivated_missing),
            "hashed_passwords": dg.MetadataValue.int(result.hashed_passwords),
            "cached_hashes": dg.MetadataValue.int(result.cached_hashes),
            "rekeyed_passwords": dg.MetadataValue.int(result.rekeyed_passwords),
            "hash_rate_per_s": dg.MetadataValue.float(round(result.hash_rate_per_s, 2)),
            "seconds": dg.MetadataValue.float(round(float(sum(result.timings.values())), 3)),
            **_step_seconds(result.timings),
            **_guard_metadata(result.guard_trip, result.guard_figures),
        }
    )


def _report_outcome(
    context: dg.AssetExecutionContext, db: DatabaseResource, ref: UploadRef
) -> str | None:
    """Tag every run of the upload with its status (eams/outcome) and decision, then record
    that its partition shows that status (the eams_decisions sensor follows up on changes
    made outside the runs). Returns the decision (`approved by alice`), if any."""
    with db.connect() as conn:
        upload = db_uploads.get_upload(conn, ref.key)
    if upload is None:
        return None
    tag_upload_runs(context.instance, upload, context.run.run_id)
    with db.connect() as conn:
        db_uploads.mark_reported(conn, ref.key, upload.status)
    return decision_text(upload)


def _step_seconds(timings: dict[str, float]) -> dict[str, object]:
    """`seconds_<step>` for every step process_upload timed (read, validate, hash, lock,
    load, snapshot, plan, hash_inline, apply, record)."""
    return {f"seconds_{k}": dg.MetadataValue.float(round(float(v), 3)) for k, v in timings.items()}


def _guard_metadata(trip: dict | None, figures: dict | None) -> dict[str, object]:
    meta: dict[str, object] = {
        "guard": (trip or {}).get("message") or "passed",
    }
    if trip:
        meta["guard_rule"] = str(trip.get("rule"))
    if figures:
        meta["guard_figures"] = dg.MetadataValue.json(figures)
    return meta


@dg.asset_check(
    asset=upload_outcome,
    name="change_guard",
    description=(
        "Fails (severity ERROR) when the change guard held the upload: nothing was applied "
        "until an operator approves or discards it (WARN once a newer upload superseded it). "
        "The description names the district, the upload and the rule; the metadata the "
        "figures and, once decided, the decision."
    ),
)
def change_guard(
    context: dg.AssetCheckExecutionContext, db: DatabaseResource, upload_ref: UploadResource
) -> dg.AssetCheckResult:
    key = upload_ref.ref().key
    with db.connect() as conn:
        upload = db_uploads.get_upload(conn, key) if key else None
        code = district_code(conn, upload.district_id) if upload else None
    if upload is None:
        return dg.AssetCheckResult(
            passed=True,
            metadata={"upload": str(key), "held": False},
            description=f"upload {key}: not recorded",
        )
    return guard_check_result(upload, code or "")


def guard_check_result(upload: db_uploads.UploadRow, district: str) -> dg.AssetCheckResult:
    """The change_guard check of an upload as recorded now."""
    trip = upload.guard_trip or {}
    held = upload.status == UploadStatus.HELD
    superseded = upload.was_held_superseded
    decision = decision_text(upload)
    where = f"District {district}, upload {upload.upload_key}"
    metadata: dict[str, object] = {
        "district": district,
        "upload": upload.upload_key,
        "status": str(upload.status),
        "held": held,
        **_guard_metadata(upload.guard_trip, upload.guard_figures),
    }
    if decision:
        metadata["decision"] = decision
    if held or superseded:
        metadata["approve"] = f"eams uploads approve {upload.upload_key} --by NAME" + (
            " --allow-older" if superseded else ""
        )
        metadata["discard"] = f"eams uploads discard {upload.upload_key} --by NAME"
    if held:
        description = (
            f"{where}: HELD, nothing applied: {trip.get('message')}. Approve or discard it "
            "(eams uploads approve|discard)."
        )
    elif superseded:
        description = (
            f"{where}: held ({trip.get('message')}), then superseded by a newer upload; "
            "not applied."
        )
    elif trip and decision:
        description = f"{where}: held ({trip.get('message')}), then {decision}."
    else:
        description = f"{where}: {upload.status}; the change guard did not hold it."
        if decision:
            description += f" {decision[:1].upper()}{decision[1:]}."
    return dg.AssetCheckResult(
        passed=not (held or superseded),
        severity=dg.AssetCheckSeverity.ERROR if held else dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=description,
    )


def _error_path(root: str, upload_id: int | None) -> str:
    """The error file's path as the district sees it on its SFTP site."""
    return posixpath.join(root or "/", ERRORS, error_file_name(upload_id or 0))


def _recorded_outcome(
    db: DatabaseResource, ref: UploadRef
) -> tuple[db_uploads.UploadRow, UploadResult]:
    with db.connect() as conn:
        upload = db_uploads.get_upload(conn, ref.key)
        if upload is None or upload.status == UploadStatus.RECEIVED:
            raise dg.Failure(
                f"upload {ref.key} has no recorded outcome: materialize upload_outcome first"
            )
        return upload, db_uploads.recorded_result(conn, upload, ref.district)


@dg.asset(
    partitions_def=DISTRICTS,
    group_name=GROUP,
    deps=[upload_outcome],
    kinds={"csv"},
    description=(
        "The error report of SPEC §5, published to the district's errors/ directory; "
        "metadata: counts, errors per code, a preview."
    ),
)
def error_report(
    context: dg.AssetExecutionContext,
    upload_ref: UploadResource,
    db: DatabaseResource,
    sftp: SftpResource,
) -> dg.MaterializeResult:
    ref = _ref(context, upload_ref)
    upload, result = _recorded_outcome(db, ref)
    errors = result.errors
    district = _load_district(db, ref.district)
    published = None
    if len(errors):
        rel = f"{ERRORS}/{error_file_name(upload.upload_id)}"
        content = render_error_file(errors)
        with district_session(sftp, district) as session:
            session.ensure_dirs()
            session.put_atomic(rel, content)
        published = _error_path(district.sftp_root, upload.upload_id)
        context.log.info(f"published {published} ({len(errors)} errors)")
    return dg.MaterializeResult(
        metadata={
            **_names(ref),
            "upload_id": dg.MetadataValue.int(upload.upload_id),
            "status": str(upload.status),
            **{k: dg.MetadataValue.int(upload.counts[k]) for k in COUNT_KEYS},
            "error_codes": dg.MetadataValue.json(dict(sorted(upload.error_codes.items()))),
            "error_lines": dg.MetadataValue.int(len(errors)),
            "error_file": published or "(none: no errors)",
            "preview": dg.MetadataValue.md(error_preview(errors)),
            **_guard_metadata(upload.guard_trip, upload.guard_figures),
        }
    )


def _report_path(root: str, upload_key: str, *, revert: bool = False) -> str:
    """A change report's path as the district sees it on its SFTP site."""
    return posixpath.join(root or "/", REPORTS, change_report_name(upload_key, revert=revert))


@dg.asset(
    partitions_def=DISTRICTS,
    group_name=GROUP,
    deps=[error_report],
    kinds={"csv"},
    description=(
        "The change report: every change the applied upload made to the district's students, "
        "one line per changed field (reports/students_changes_<upload key>.csv), and once "
        "it is reverted what the revert put back (..._revert.csv), built from "
        "student_history; metadata: lines per change."
    ),
)
def change_report(
    context: dg.AssetExecutionContext,
    upload_ref: UploadResource,
    db: DatabaseResource,
    sftp: SftpResource,
) -> dg.MaterializeResult:
    ref = _ref(context, upload_ref)
    with db.connect() as conn:
        upload = db_uploads.get_upload(conn, ref.key)
    if upload is None or upload.status == UploadStatus.RECEIVED:
        raise dg.Failure(
            f"upload {ref.key} has no recorded outcome: materialize upload_outcome first"
        )
    metadata: dict[str, object] = {**_names(ref), "status": str(upload.status)}
    which = reports_of(upload.status)
    if not which:
        context.log.info(f"upload {ref.key} is {upload.status}: nothing applied, no change report")
        return dg.MaterializeResult(
            metadata={**metadata, "change_report": f"(none: {upload.status}, nothing applied)"}
        )
    district = _load_district(db, ref.district)
    with db.connect() as conn:
        reports = [build_change_report(conn, ref.key, revert=revert) for revert in which]
    with district_session(sftp, district) as session:
        session.ensure_dirs()
        for report in reports:
            session.put_atomic(f"{REPORTS}/{report.name}", report.content)
            path = _report_path(district.sftp_root, ref.key, revert=report.revert)
            context.log.info(f"published {path} ({report.lines} lines)")
            prefix = "revert_" if report.revert else ""
            metadata |= {
                f"{prefix}change_report": path,
                f"{prefix}change_lines": dg.MetadataValue.int(report.lines),
                f"{prefix}changes": dg.MetadataValue.json(report.changes),
                f"{prefix}change_report_seconds": dg.MetadataValue.float(round(report.seconds, 3)),
            }
    return dg.MaterializeResult(metadata=metadata)


def _md_cell(value: object, limit: int = 80) -> str:
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'") or " "


def error_preview(errors: pd.DataFrame, limit: int = PREVIEW_ROWS) -> str:
    """The first errors as a markdown table (the error file never holds passwords)."""
    if not len(errors):
        return "No errors."
    lines = [
        "| Line | Student ID | Column | Error Code | Message |",
        "|---:|---|---|---|---|",
    ]
    for r in errors.head(limit).itertuples(index=False):
        cells = (r.line, r.student_id or "", r.column or "", r.code, r.message)
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    if len(errors) > limit:
        lines.append(f"\n… and {len(errors) - limit} more in the error file.")
    return "\n".join(lines)


@dg.asset(
    partitions_def=DISTRICTS,
    group_name=GROUP,
    deps=[change_report],
    kinds={"email"},
    description=(
        "The outcome email to the district's contacts (counts, licenses, the error file's and "
        "the change report's paths); the low-licenses alert when due; then the raw file "
        "leaves processed/ (EAMS_PROCESSED_RETENTION_DAYS=0)."
    ),
)
def district_email(
    context: dg.AssetExecutionContext,
    config: EmailConfig,
    upload_ref: UploadResource,
    db: DatabaseResource,
    smtp: SmtpResource,
    sftp: SftpResource,
    archive: ArchiveResource,
) -> dg.MaterializeResult:
    ref = _ref(context, upload_ref)
    upload, result = _recorded_outcome(db, ref)
    metadata = {**_names(ref), **_email(context, config, db, smtp, ref, upload, result)}
    metadata.update(_license_alert(context, db, smtp, ref, upload))
    metadata.update(_remove_raw_upload(context, db, sftp, smtp, archive, ref))
    return dg.MaterializeResult(metadata=metadata)


def _email(
    context: dg.AssetExecutionContext,
    config: EmailConfig,
    db: DatabaseResource,
    smtp: SmtpResource,
    ref: UploadRef,
    upload: db_uploads.UploadRow,
    result: UploadResult,
) -> dict[str, object]:
    district = _load_district(db, ref.district)
    # where error_report published the errors (whoever recorded the outcome: a run, or the
    # CLI's approval, which does not know the SFTP site)
    error_file = _error_path(district.sftp_root, upload.upload_id) if result.has_errors else None
    # where change_report published what was applied (or what its revert put back)
    reports = reports_of(upload.status)
    changes = _report_path(district.sftp_root, ref.key, revert=reports[-1]) if reports else None
    with db.connect() as conn:
        licenses = order_licenses(conn, district.code)
    email = recorded_outcome_email(
        district,
        upload,
        result,
        error_file=error_file,
        change_report=changes,
        sender=smtp.sender,
        licenses=licenses,
    )
    if email is None:
        context.log.info(f"upload {ref.key} is {upload.status}: the district is not emailed")
        return {"sent": False, "why": f"{upload.status}: not emailed"}
    if not config.resend and _already_sent(context, ref.key, str(upload.status)):
        context.log.info(f"the email for upload {ref.key} was already sent; not sent again")
        return {"sent": False, "why": "already sent"}
    message, recipients = email
    smtp.send(message)
    context.log.info(f"emailed {len(recipients)} contact(s): {message['Subject']}")
    operators_told = 0
    if upload.status == UploadStatus.HELD and upload.guard_trip:
        operators = eams_config.operator_emails()
        if operators:
            smtp.send(
                build_held_operator_email(
                    operators=operators,
                    sender=smtp.sender,
                    district_code=ref.district,
                    district_name=district.name,
                    upload_key=ref.key,
                    upload_id=upload.upload_id,
                    summary=result.summary(error_file),
                    guard_trip=upload.guard_trip,
                )
            )
            operators_told = len(operators)
            context.log.info(f"emailed {operators_told} operator(s): held for review")
        else:
            context.log.warning("upload held but EAMS_OPERATOR_EMAILS is empty: no operator told")
    return {
        "sent": True,
        "status": str(upload.status),
        "recipients": dg.MetadataValue.int(len(recipients)),
        "operators": dg.MetadataValue.int(operators_told),
        "subject": str(message["Subject"]),
    }


def _license_alert(
    context: dg.AssetExecutionContext,
    db: DatabaseResource,
    smtp: SmtpResource,
    ref: UploadRef,
    upload: db_uploads.UploadRow,
) -> dict[str, object]:
    """The low-licenses alert, when the district's Enterprise order is low now or the upload
    had NO_LICENSE_AVAILABLE rows (once a day, or once per such upload). An alert that
    cannot be sent is logged, never fails the run: the district's outcome email is out, and
    the next upload's check tries again (nothing was recorded)."""
    district = _load_district(db, ref.district)
    try:
        with db.connect() as conn:
            alert = alert_if_licenses_low(
                conn,
                district,
                upload,
                now=dt.datetime.now(dt.UTC),
                mailer=smtp,
                operators=eams_config.operator_emails(),
            )
    except Exception as exc:  # the outcome is recorded and emailed: never fail the run here
        note = f"low-licenses alert NOT sent ({type(exc).__name__}: {exc})"
        context.log.error(note)
        return {"licenses_alert": note, "licenses_alert_sent": False}
    (context.log.warning if alert.sent else context.log.info)(alert.note)
    return {"licenses_alert": alert.note, "licenses_alert_sent": alert.sent}


def _remove_raw_upload(
    context: dg.AssetExecutionContext,
    db: DatabaseResource,
    sftp: SftpResource,
    smtp: SmtpResource,
    archive: ArchiveResource,
    ref: UploadRef,
) -> dict[str, object]:
    """The raw file (clear passwords) leaves processed/ once archived and recorded, when
    EAMS_PROCESSED_RETENTION_DAYS allows it now (0, the default); else the retention job.
    A raw file that is no longer the archived copy (its writer went on after the claim) is
    kept, and the operators are told."""
    if eams_config.retention_settings().processed_days > 0:
        return {"raw_file_removed": False, "why": "kept for EAMS_PROCESSED_RETENTION_DAYS"}
    store = archive.get()
    with db.connect() as conn:
        row = db_uploads.get_upload(conn, ref.key)
    uploads = known_uploads([row] if row else [], store, ref.district)
    now = dt.datetime.now(dt.UTC)
    if not uploads or not raw_removable(uploads[0], now, 0):
        return {"raw_file_removed": False, "why": "not finished, held or not archived"}
    district = _load_district(db, ref.district)
    processed_rel = f"{PROCESSED}/{ref.processed_name}"
    with district_session(sftp, district) as session:
        removal = remove_raw_upload(
            session, store, ref.district, uploads[0], ref.processed_name, now, 0
        )
    if removal.kept is not None:
        with db.connect() as conn:
            note = alert_raw_kept(conn, smtp, district, removal.kept, context.log.warning)
        return {
            "raw_file_removed": False,
            "why": "differs from the archived copy: kept",
            "raw_file_kept": note,
            "processed_path": processed_rel,
        }
    with db.connect() as conn:
        db_uploads.mark_raw_removed(conn, ref.key)
    if removal.removed:
        context.log.info(f"removed the raw upload {processed_rel} (archived encrypted)")
    return {
        "raw_file_removed": dg.MetadataValue.bool(removal.removed),
        "processed_path": processed_rel,
    }


def _already_sent(context: dg.AssetExecutionContext, key: str, status: str) -> bool:
    """Was this outcome's email sent already? (a held upload approved later gets its
    outcome email: another status; materializations from before had no status). Read from
    the materializations of this asset in the upload's earlier runs (tagged with the upload
    key, or, made before the district partitions, with the upload key as partition)."""
    for run in runs_of_upload(context.instance, key):
        if run.run_id == context.run.run_id:
            continue
        for record in context.instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records:
            materialization = record.asset_materialization
            if materialization is None or materialization.asset_key != context.asset_key:
                continue
            sent = materialization.metadata.get("sent")
            if sent is not None and getattr(sent, "value", sent) is True:
                was = materialization.metadata.get("status")
                if was is None or getattr(was, "value", was) == status:
                    return True
    return False


UPLOAD_ASSETS = [upload_file, upload_outcome, error_report, change_report, district_email]
UPLOAD_CHECKS = [change_guard]
