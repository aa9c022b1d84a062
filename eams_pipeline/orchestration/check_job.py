"""The check drops' job, ``check_upload``: a district's ``check/students.csv`` validated by
the engine as a dry run, applied to nothing (:mod:`eams_pipeline.services.check_drop`).

A district sensor requests it like an upload (the file settled in ``check/``; its key is an
upload key, ``eams_upload_requests`` starts the run). It is an op job, not the upload
assets: a check is never the district's latest upload materialization. Its runs carry the
tags ``eams/kind=check``, ``eams/district`` and ``eams/upload_key`` (run config
``resources.upload_ref.config.key``), then ``eams/outcome=checked`` and
``eams/checked_as`` (what the file would have come to).

    claim_check_file    rename check/students.csv to processed/students_<key>.csv, if it is
                        the file the sensor saw settle
    check_file          read it, run the engine as a dry run (nothing applied, hashed,
                        stored or locked), publish reports/students_check_<key>.csv, record
                        the check (status checked)
    email_check_result  the raw file leaves processed/ (EAMS_PROCESSED_RETENTION_DAYS), then
                        the contacts get the "check result" email

Every step can run again: a recorded check is not run again, and its email is not sent
twice (``resend`` to send it again). The raw file is never archived: a re-execution reads
``processed/`` until the check is recorded.

A check run carries ``eams/district``, so dagster.yaml's one-run-per-district limit queues a
check and an upload of the same district one after the other (a check hashes nothing: its
run takes seconds); inside the database a check takes no lock an upload waits for.
"""

import datetime as dt
import posixpath

import dagster as dg

from eams_pipeline import config as eams_config
from eams_pipeline.core.names import (
    CHECK,
    PROCESSED,
    REPORTS,
    UPLOAD_NAME,
    UploadRef,
    check_report_name,
)
from eams_pipeline.core.outcome import COUNT_KEYS, UploadKind
from eams_pipeline.core.upload_retention import raw_removable
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.districts import District, get_district
from eams_pipeline.orchestration.assets import (
    EmailConfig,
    district_session,
    expected_stat,
    read_claimed,
)
from eams_pipeline.orchestration.decisions import tag_upload_runs
from eams_pipeline.orchestration.partitions import (
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
from eams_pipeline.services.check_drop import (
    NotACheck,
    check_report,
    check_result_email,
    checked_result,
    record_check,
    recorded_check,
    run_check,
)
from eams_pipeline.services.process import Upload, file_too_large
from eams_pipeline.services.progress import LineProgress

CHECK_JOB_NAME = "check_upload"
KIND_TAG = "eams/kind"
CHECKED_AS_TAG = "eams/checked_as"
PROGRESS_LOG_SECONDS = 5.0


def check_tags(ref: UploadRef) -> dict[str, str]:
    """The tags of every run of a check drop."""
    return {**upload_tags(ref), KIND_TAG: str(UploadKind.CHECK)}


def report_path(district: District, upload_key: str) -> str:
    """The check report's path as the district sees it on its SFTP site."""
    return posixpath.join(district.sftp_root, REPORTS, check_report_name(upload_key))


def _ref(context: dg.OpExecutionContext, upload_ref: UploadResource) -> UploadRef:
    """The run's check drop (run config), checked against its tags (added when missing,
    e.g. launched from the launchpad)."""
    ref = upload_ref.ref()
    tags = context.run.tags
    expected = check_tags(ref)
    for tag, value in expected.items():
        if tags.get(tag) not in (None, value):
            raise dg.Failure(
                f"run tag {tag}={tags[tag]} does not match check {ref.key}", allow_retries=False
            )
    missing = {tag: value for tag, value in expected.items() if tag not in tags}
    if missing:
        context.instance.add_run_tags(context.run.run_id, missing)
    return ref


def _names(ref: UploadRef) -> dict[str, object]:
    return {
        "upload_key": ref.key,
        "district": ref.district,
        "received_at": ref.received_at.isoformat(),
        "kind": str(UploadKind.CHECK),
    }


def _district(db: DatabaseResource, code: str) -> District:
    with db.connect() as conn:
        district = get_district(conn, code)
    if district is None:
        raise dg.Failure(f"district {code} is not in the database (eams setup load)")
    return district


def _recorded(db: DatabaseResource, key: str) -> db_uploads.UploadRow | None:
    try:
        with db.connect() as conn:
            return recorded_check(conn, key)
    except NotACheck as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc


@dg.op(
    out=dg.Out(dg.Nothing),
    description="Claim check/students.csv into processed/ (the file the sensor saw settle).",
)
def claim_check_file(
    context: dg.OpExecutionContext,
    upload_ref: UploadResource,
    db: DatabaseResource,
    sftp: SftpResource,
) -> dg.Output:
    ref = _ref(context, upload_ref)
    processed_rel = f"{PROCESSED}/{ref.processed_name}"
    recorded = _recorded(db, ref.key)
    if recorded is not None:
        context.log.info(f"check {ref.key} is already recorded; nothing claimed")
        return dg.Output(None, metadata={**_names(ref), "source": "recorded check"})
    district = _district(db, ref.district)
    with district_session(sftp, district) as session:
        session.ensure_dirs()
        if session.exists(processed_rel):
            context.log.info(f"check {ref.key} was already claimed: {processed_rel}")
            source = f"{processed_rel} (claimed by an earlier attempt)"
        else:
            _claim(context, session, ref)
            source = f"{CHECK}/{UPLOAD_NAME}"
    return dg.Output(
        None, metadata={**_names(ref), "source": source, "processed_path": processed_rel}
    )


def _claim(context: dg.OpExecutionContext, session, ref: UploadRef) -> None:
    expected = expected_stat(context)
    if expected is None:
        raise dg.Failure(
            f"check {ref.key} is not in {PROCESSED}/; only the sensor's run (tags "
            f"{FILE_SIZE_TAG}, {FILE_MTIME_TAG}) may claim {CHECK}/{UPLOAD_NAME}",
            allow_retries=False,
        )
    current = next((f for f in session.list_dir(CHECK) if f.name == UPLOAD_NAME), None)
    if current is None:
        raise dg.Failure(
            f"{CHECK}/{UPLOAD_NAME} is gone and check {ref.key} is not in {PROCESSED}/: the "
            "file was removed before it could be claimed",
            allow_retries=False,
        )
    if (current.size, current.mtime) != expected:
        raise dg.Failure(
            f"{CHECK}/{UPLOAD_NAME} changed after the sensor requested check {ref.key} "
            f"(size/mtime {expected[0]}/{expected[1]} then, {current.size}/{current.mtime} "
            "now); nothing was claimed: the sensor requests a new check for the new file",
            allow_retries=False,
        )
    session.claim(UPLOAD_NAME, ref.processed_name, source=CHECK)
    context.log.info(f"claimed {CHECK}/{UPLOAD_NAME} as {PROCESSED}/{ref.processed_name}")


def _metadata(ref: UploadRef, row: db_uploads.UploadRow, published: str) -> dict[str, object]:
    trip = row.guard_trip or {}
    meta: dict[str, object] = {
        **_names(ref),
        "upload_id": dg.MetadataValue.int(row.upload_id),
        "status": str(row.status),
        "checked_as": str(row.checked_as),
        **{k: dg.MetadataValue.int(int(row.counts[k])) for k in COUNT_KEYS},
        "deactivated_missing": dg.MetadataValue.int(row.deactivated_missing),
        "error_codes": dg.MetadataValue.json(dict(sorted(row.error_codes.items()))),
        "guard": trip.get("message") or "passed",
        "report_file": published,
        # no preview of the errors (an upload's error_report has one): a check stores no
        # student data, not even Student IDs in Dagster's event log
    }
    if trip:
        meta["guard_rule"] = str(trip.get("rule"))
    if row.guard_figures:
        meta["guard_figures"] = dg.MetadataValue.json(row.guard_figures)
    return meta


@dg.op(
    ins={"claimed": dg.In(dg.Nothing)},
    out=dg.Out(dg.Nothing),
    description=(
        "Run the engine on the checked file as a dry run (nothing applied, hashed or "
        "stored), publish reports/students_check_<key>.csv, record the check."
    ),
)
def check_file(
    context: dg.OpExecutionContext,
    upload_ref: UploadResource,
    db: DatabaseResource,
    sftp: SftpResource,
    engine: EngineResource,
) -> dg.Output:
    ref = _ref(context, upload_ref)
    district = _district(db, ref.district)
    published = report_path(district, ref.key)
    row = _recorded(db, ref.key)
    if row is not None:
        context.log.info(f"check {ref.key} is already recorded: {row.checked_as}")
        _tag(context, row)
        return dg.Output(None, metadata=_metadata(ref, row, published))
    processed_rel = f"{PROCESSED}/{ref.processed_name}"
    limit = eams_config.max_upload_bytes()
    with district_session(sftp, district) as session:
        got = read_claimed(context, session, processed_rel, limit)
    upload = Upload(
        district=ref.district,
        data=got.data or b"",
        file_name=UPLOAD_NAME,
        key=ref.key,
        received_at=ref.received_at,
        rejection=None if got.data is not None else file_too_large(got.stat.size, limit),
    )
    progress = LineProgress(
        context.log.info, interval=PROGRESS_LOG_SECONDS, batch_seconds=PROGRESS_LOG_SECONDS
    )
    with progress, db.connect() as conn:
        result = run_check(conn, upload, engine.get(), progress=progress)
    with district_session(sftp, district) as session:
        session.ensure_dirs()
        session.put_atomic(f"{REPORTS}/{check_report_name(ref.key)}", check_report(result))
    context.log.info(f"published {published} ({len(result.errors)} errors)")
    with db.connect() as conn:
        row = record_check(conn, upload, result, report_file=published)
    _tag(context, row)
    verdict = (result.guard_trip or {}).get("message")
    context.log.info(
        f"check {ref.key}: the file would be {row.checked_as}"
        + (f" (the change guard would hold it: {verdict})" if verdict else "")
        + "; nothing applied"
    )
    return dg.Output(None, metadata=_metadata(ref, row, published))


def _tag(context: dg.OpExecutionContext, row: db_uploads.UploadRow) -> None:
    tag_upload_runs(context.instance, row, context.run.run_id)
    context.instance.add_run_tags(context.run.run_id, {CHECKED_AS_TAG: str(row.checked_as)})


@dg.op(
    ins={"checked": dg.In(dg.Nothing)},
    out=dg.Out(dg.Nothing),
    description=(
        "The raw checked file leaves processed/ (EAMS_PROCESSED_RETENTION_DAYS), then the "
        "district's contacts get the check result email."
    ),
)
def email_check_result(
    context: dg.OpExecutionContext,
    config: EmailConfig,
    upload_ref: UploadResource,
    db: DatabaseResource,
    sftp: SftpResource,
    smtp: SmtpResource,
    archive: ArchiveResource,
) -> dg.Output:
    ref = _ref(context, upload_ref)
    row = _recorded(db, ref.key)
    if row is None:
        raise dg.Failure(f"check {ref.key} is not recorded: run check_file first")
    district = _district(db, ref.district)
    metadata: dict[str, object] = {
        **_names(ref),
        **_remove_raw(context, db, sftp, smtp, archive, ref, row, district),
    }
    earlier = [
        r
        for r in runs_of_upload(context.instance, ref.key, statuses=[dg.DagsterRunStatus.SUCCESS])
        if r.run_id != context.run.run_id
    ]
    if earlier and not config.resend:
        context.log.info(f"the check result of {ref.key} was already sent; not sent again")
        return dg.Output(None, metadata={**metadata, "sent": False, "why": "already sent"})
    with db.connect() as conn:
        result = checked_result(conn, row)
    message, recipients = check_result_email(
        district, row, result, report_path=report_path(district, ref.key), sender=smtp.sender
    )
    smtp.send(message)
    context.log.info(f"emailed {len(recipients)} contact(s): {message['Subject']}")
    return dg.Output(
        None,
        metadata={
            **metadata,
            "sent": True,
            "recipients": dg.MetadataValue.int(len(recipients)),
            "subject": str(message["Subject"]),
        },
    )


def _remove_raw(
    context: dg.OpExecutionContext,
    db: DatabaseResource,
    sftp: SftpResource,
    smtp: SmtpResource,
    archive: ArchiveResource,
    ref: UploadRef,
    row: db_uploads.UploadRow,
    district: District,
) -> dict[str, object]:
    """The raw file (clear passwords) leaves processed/ now the check is recorded, when
    EAMS_PROCESSED_RETENTION_DAYS is 0 (the default); else the retention job removes it."""
    if eams_config.retention_settings().processed_days > 0:
        return {"raw_file_removed": False, "why_kept": "EAMS_PROCESSED_RETENTION_DAYS"}
    store = archive.get()
    [known] = known_uploads([row], store, ref.district)
    now = dt.datetime.now(dt.UTC)
    if not raw_removable(known, now, 0):
        return {"raw_file_removed": False, "why_kept": "not removable"}
    with district_session(sftp, district) as session:
        removal = remove_raw_upload(session, store, ref.district, known, ref.processed_name, now, 0)
    if removal.kept is not None:  # never for a check (not archived): kept, operators told
        with db.connect() as conn:
            note = alert_raw_kept(conn, smtp, district, removal.kept, context.log.warning)
        return {"raw_file_removed": False, "raw_file_kept": note}
    with db.connect() as conn:
        db_uploads.mark_raw_removed(conn, ref.key)
    if removal.removed:
        context.log.info(f"removed the raw checked file {PROCESSED}/{ref.processed_name}")
    return {"raw_file_removed": dg.MetadataValue.bool(removal.removed)}


@dg.job(
    name=CHECK_JOB_NAME,
    tags={KIND_TAG: str(UploadKind.CHECK)},
    executor_def=dg.in_process_executor,
    description=(
        "One check drop of one district (run config resources.upload_ref.config.key): "
        "check/students.csv validated by the engine as a dry run against the current "
        "database, nothing applied; publishes reports/students_check_<key>.csv and emails "
        "the district's contacts the check result."
    ),
)
def check_job() -> None:
    email_check_result(checked=check_file(claimed=claim_check_file()))
