"""Sensors: one per district watching its SFTP incoming/, and the operators' crash alert.

A district sensor only lists and stats ``incoming/`` (it never downloads) and requests one
run per upload once ``students.csv`` has settled (see :mod:`eams_pipeline.core.settle`): it
records the request in the database, and the location's ``eams_upload_requests`` sensor starts
the run (:mod:`.upload_request_sensor`; a district sensor targets no job, so that the UI does
not load every district sensor's state on each page of the upload assets). SFTP failures:

- the server cannot be reached (:class:`SftpTransientError`): the tick is skipped with the
  reason and the next tick tries again;
- wrong credentials or host key (:class:`SftpAuthError`, :class:`SftpHostKeyError`), or any
  other SFTP error: the tick fails, red in the UI, with the message.
"""

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dagster as dg

from eams_pipeline.config import (
    district_cache_seconds,
    operator_emails,
    sensor_interval_seconds,
    settle_seconds,
)
from eams_pipeline.core.alert_rules import (
    DIGEST_LIST,
    MISNAMED_DIGEST,
    MISNAMED_FILE,
    MISSING_UPLOAD,
    local_day,
    mark_reported,
    misnamed_subject,
    missing_upload,
    settled_stray,
    stray,
    track_other_files,
    unreported,
)
from eams_pipeline.core.names import UPLOAD_NAME, UploadRef
from eams_pipeline.core.notifications import (
    build_failure_email,
    build_missing_upload_email,
    build_stray_files_email,
)
from eams_pipeline.core.remote_files import RemoteFile
from eams_pipeline.core.settle import Other, Requested, SensorState, decide, listed
from eams_pipeline.db import district_alerts as db_alerts
from eams_pipeline.db.districts import District, get_district, list_districts
from eams_pipeline.db.upload_requests import record_sensor_request
from eams_pipeline.io.sftp import SftpFileNotFoundError, SftpTransientError
from eams_pipeline.orchestration.partitions import DISTRICT_TAG, runs_of_upload, upload_key_of_run
from eams_pipeline.orchestration.resources import DatabaseResource, SftpResource, SmtpResource
from eams_pipeline.orchestration.upload_request_sensor import UPLOAD_REQUESTS_SENSOR_NAME

Clock = Callable[[], dt.datetime]
JobLike = Any  # a JobDefinition or the unresolved asset job of define_asset_job
WILL_RETRY_TAG = "dagster/will_retry"
_MAX_ERROR_LINE = 300


def sensor_name(district_code: str) -> str:
    """``sftp_<code>``, one name per code: ``_`` is written ``__`` and ``-`` ``_h``."""
    return "sftp_" + district_code.replace("_", "__").replace("-", "_h")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DistrictDirectory:
    """Every district's settings, read in one query and kept for ``ttl_seconds``.

    2,000 district sensors each reading their own row every tick would be 2,000 queries (and
    connections) per interval; they read this instead, refreshed by the first tick after
    ``ttl_seconds`` (``clock``: monotonic seconds, injectable). A change in master data reaches
    the sensors within ``ttl_seconds``. Thread-safe (sensors tick in threads).
    """

    def __init__(
        self,
        load: Callable[[], Iterable[District]],
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._districts: dict[str, District] = {}
        self._loaded_at: float | None = None
        self.loads = 0

    def get(self, code: str) -> District | None:
        with self._lock:
            now = self._clock()
            if self._loaded_at is None or now - self._loaded_at >= self.ttl_seconds:
                self._districts = {d.code: d for d in self._load()}
                self._loaded_at = now
                self.loads += 1
            return self._districts.get(code)


_DIRECTORIES: dict[tuple[str | None, float], DistrictDirectory] = {}
_DIRECTORIES_LOCK = threading.Lock()


def district_directory(db: DatabaseResource, ttl_seconds: float) -> DistrictDirectory:
    """The process's :class:`DistrictDirectory` of this database."""
    key = (db.url, ttl_seconds)
    with _DIRECTORIES_LOCK:
        directory = _DIRECTORIES.get(key)
        if directory is None:

            def load() -> list[District]:
                with db.connect() as conn:
                    return list_districts(conn)

            directory = _DIRECTORIES[key] = DistrictDirectory(load, ttl_seconds)
        return directory


def read_district(db: DatabaseResource, code: str, ttl_seconds: float) -> District | None:
    """The district's settings: from the shared directory, or its own row when ttl is 0."""
    if ttl_seconds <= 0:
        with db.connect() as conn:
            return get_district(conn, code)
    return district_directory(db, ttl_seconds).get(code)


def build_district_sensor(
    district_code: str,
    *,
    interval_seconds: int | None = None,
    settle: float | None = None,
    clock: Clock = _utcnow,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    cache_seconds: float | None = None,
    resources: Mapping[str, object] | None = None,
) -> dg.SensorDefinition:
    """The sensor watching one district's ``incoming/`` (settings from :class:`DistrictDirectory`,
    at most ``cache_seconds`` old, EAMS_DISTRICT_CACHE_SECONDS when unset; 0: read every tick).

    With ``resources`` (the code location's ``db``, ``sftp`` and ``smtp``), the sensor uses
    those objects directly: Dagster then builds no resources for a tick (initialising three
    configurable resources costs more CPU than the tick's own work, 2,000 sensors times every
    interval: bench/RESULTS.md, "Fleet"). Without, it takes them as Dagster resources
    (tests, one-offs).
    """
    interval = interval_seconds if interval_seconds is not None else sensor_interval_seconds()
    settle_window = settle if settle is not None else settle_seconds()
    ttl = cache_seconds if cache_seconds is not None else district_cache_seconds()

    @dg.sensor(
        name=sensor_name(district_code),
        minimum_interval_seconds=interval,
        default_status=default_status,
        description=(
            f"Watches district {district_code}'s SFTP incoming/ for students.csv; requests one "
            f"run per upload once it has been unchanged for {settle_window:g}s."
        ),
        tags={"eams/district": district_code},
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        db: DatabaseResource,
        sftp: SftpResource,
        smtp: SmtpResource,
    ) -> dg.SensorResult | dg.SkipReason:
        return _tick(context, db, sftp, smtp)

    def _tick(
        context: dg.SensorEvaluationContext,
        db: DatabaseResource,
        sftp: SftpResource,
        smtp: SmtpResource,
    ) -> dg.SensorResult | dg.SkipReason:
        now = clock()
        district = read_district(db, district_code, ttl)
        if district is None:
            return dg.SkipReason(f"district {district_code} is not in the database any more")
        if district.sftp is None:
            return dg.SkipReason(f"district {district_code} has no SFTP account configured")
        try:
            with sftp.session(district.sftp) as session:
                files = session.list_incoming()
        except SftpTransientError as exc:
            return dg.SkipReason(f"SFTP server unreachable, trying again next tick: {exc}")
        except SftpFileNotFoundError:
            return dg.SkipReason(f"{district.sftp.where}: there is no incoming/ directory yet")
        # SftpAuthError, SftpHostKeyError and other SftpErrors propagate: the tick fails.
        state = SensorState.from_cursor(context.cursor)
        decision = decide(
            files,
            state,
            now,
            district=district.code,
            settle_seconds=settle_window,
            process_at=district.process_at,
            timezone=district.timezone,
            requested_run_succeeded=_requested_run_succeeded(context, state),
        )
        if decision.ignored:
            context.log.info(f"left alone in incoming/: {listed(decision.ignored, 10)}")
        waiting = any(f.name == UPLOAD_NAME for f in files) or state.requested is not None
        alerts = send_district_alerts(
            context,
            db,
            smtp,
            district,
            now,
            files,
            replace(state, others=track_other_files(files, state.others, now)),
            settle_window,
            file_waiting=waiting,
        )
        notes = alerts.notes
        cursor = replace(
            decision.state, others=alerts.others, digest_day=alerts.digest_day
        ).to_cursor()
        request = decision.request
        if request is None:
            reason = " | ".join([*notes, decision.reason])
            return dg.SensorResult(skip_reason=reason, cursor=cursor)
        context.log.info(decision.reason)
        return request_upload(db, district.code, request, cursor)

    bound_db, bound_sftp, bound_smtp = (
        (resources.get("db"), resources.get("sftp"), resources.get("smtp"))
        if resources is not None
        else (None, None, None)
    )
    if not (
        isinstance(bound_db, DatabaseResource)
        and isinstance(bound_sftp, SftpResource)
        and isinstance(bound_smtp, SmtpResource)
    ):
        return _sensor  # resources given otherwise (e.g. as definitions): Dagster builds them

    @dg.sensor(
        name=sensor_name(district_code),
        minimum_interval_seconds=interval,
        default_status=default_status,
        description=_sensor.description,
        tags={"eams/district": district_code},
    )
    def _bound_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        return _tick(context, bound_db, bound_sftp, bound_smtp)

    return _bound_sensor


@dataclass
class AlertsSent:
    """What a tick's alerts leave: lines for its reason and what the cursor remembers."""

    notes: list[str]
    others: dict[str, Other]
    digest_day: str | None


def send_district_alerts(
    context: dg.SensorEvaluationContext,
    db: DatabaseResource,
    smtp: SmtpResource,
    district: District,
    now: dt.datetime,
    files: Sequence[RemoteFile],
    state: SensorState,
    settle_window: float,
    *,
    file_waiting: bool,
) -> AlertsSent:
    """Send the missing-upload alert and the stray-file digest due now, each once (recorded
    in district_alerts in the transaction that sends it). ``state.others``: the stray files
    tracked as of this tick.

    An alert that cannot be sent (SMTP down) is logged and tried again next tick; it never
    keeps the sensor from requesting a run.
    """
    notes: list[str] = []
    others, digest_day = state.others, state.digest_day
    today = local_day(now, district.timezone)
    settled = settled_stray(files, others, now, settle_window)
    new = unreported(settled, others)
    strays = stray(files)
    if new and digest_day == today:
        notes.append(f"{_stray_text(strays)}; today's digest was sent: the next one tomorrow")
        new = []
    # Nothing to look up unless an alert could be due: no expected_by, or not yet its time,
    # and no new stray file settled (the usual tick) need no database at all.
    could_miss = (
        missing_upload(
            now,
            expected_by=district.expected_by,
            timezone=district.timezone,
            last_received=None,
            file_waiting=file_waiting,
        )
        is not None
    )
    if not could_miss and not new:
        return AlertsSent(notes, others, digest_day)
    with db.connect() as conn:
        missing = missing_upload(
            now,
            expected_by=district.expected_by,
            timezone=district.timezone,
            last_received=db_alerts.last_received(conn, district.district_id),
            file_waiting=file_waiting,
            alerted=db_alerts.alerted(conn, district.district_id, MISSING_UPLOAD),
        )
        if new:
            # reported already (a reset cursor, a reload, another shard layout): not again
            known = db_alerts.alerted_among(
                conn,
                district.district_id,
                MISNAMED_FILE,
                [misnamed_subject(f.name, f.size) for f in new],
            )
            others = mark_reported(
                others, [f for f in new if misnamed_subject(f.name, f.size) in known]
            )
            new = unreported(new, others)
            if new and db_alerts.alerted_among(
                conn, district.district_id, MISNAMED_DIGEST, [today]
            ):
                digest_day, new = today, []
                notes.append(f"{_stray_text(strays)}; today's digest was sent already")
        conn.rollback()
        if missing is not None:
            text = (
                f"MISSING UPLOAD: no {UPLOAD_NAME} received since {missing.since.isoformat()} "
                f"(expected by {missing.due.isoformat()})"
            )
        if missing is not None and missing.already_alerted:
            notes.append(f"{text} (already alerted)")
        elif missing is not None:
            message = build_missing_upload_email(
                district_code=district.code,
                district_name=district.name,
                contacts=list(district.contacts),
                operators=operator_emails(),
                sender=smtp.sender,
                due=missing.due,
                since=missing.since,
                last_received=missing.last_received,
            )
            notes.append(
                _send_once(
                    context, conn, smtp, district, MISSING_UPLOAD, missing.subject, text, message
                )[0]
            )
        if new and not district.contacts:
            notes.append(f"{_stray_text(strays)}; the district has no contacts to tell")
            digest_day = today  # looked at again tomorrow
        elif new:
            # new files first, then the others already reported, DIGEST_LIST at most
            listed_files = [*new, *(f for f in settled if f not in new)][:DIGEST_LIST]
            message = build_stray_files_email(
                district_code=district.code,
                district_name=district.name,
                contacts=list(district.contacts),
                sender=smtp.sender,
                files=[(f.shown, f.size) for f in listed_files],
                more=len(strays) - len(listed_files),
            )
            text = _stray_text(strays)
            subjects = [misnamed_subject(f.name, f.size) for f in settled]
            note, recorded = _send_once(
                context,
                conn,
                smtp,
                district,
                MISNAMED_DIGEST,
                today,
                text,
                message,
                record=lambda: db_alerts.record_alerts(
                    conn, district.district_id, MISNAMED_FILE, subjects, f"digest of {today}"
                ),
            )
            notes.append(note)
            if recorded:
                others, digest_day = mark_reported(others, settled), today
    return AlertsSent(notes, others, digest_day)


def _stray_text(strays: Sequence[RemoteFile]) -> str:
    noun = "file" if len(strays) == 1 else "files"
    names = listed([f.name for f in strays], 3)
    return f"MISNAMED FILES: {len(strays)} {noun} in incoming/ not {UPLOAD_NAME}: {names}"


def _send_once(
    context: dg.SensorEvaluationContext,
    conn,
    smtp: SmtpResource,
    district: District,
    kind: str,
    subject: str,
    text: str,
    message,
    record: Callable[[], None] | None = None,
) -> tuple[str, bool]:
    """Send an alert unless it is recorded already; ``record`` writes more rows in the same
    transaction. Returns the tick's line and whether the alert is recorded now."""
    try:
        with conn.transaction():
            if not db_alerts.claim_alert(conn, district.district_id, kind, subject, text):
                return f"{text} (already alerted)", True
            if record is not None:
                record()
            smtp.send(message)
    except Exception as exc:  # an alert must never keep the sensor from requesting runs
        context.log.error(f"{text}: the alert could not be sent, retrying next tick: {exc}")
        return f"{text}; alert NOT sent ({type(exc).__name__}), retrying next tick", False
    recipients = message.get_all("To", []) + message.get_all("Cc", [])
    context.log.warning(f"{text}: emailed {', '.join(recipients)}")
    return f"{text}; emailed {', '.join(recipients)}", True


def request_upload(
    db: DatabaseResource, district_code: str, request: Requested, cursor: str
) -> dg.SensorResult:
    """A settled students.csv: its upload requested (recorded with the file's size and time,
    which the run's claim checks; the eams_upload_requests sensor starts its run) before the
    tick's cursor moves on. Recording it again (a tick evaluated twice) changes nothing."""
    with db.connect() as conn:
        record_sensor_request(
            conn, district_code, request.upload_key, request.size, request.mtime
        )
    return dg.SensorResult(
        skip_reason=(
            f"requested upload {request.upload_key} ({request.size} bytes): its run is started "
            f"by {UPLOAD_REQUESTS_SENSOR_NAME}"
        ),
        cursor=cursor,
    )


def _requested_run_succeeded(context: dg.SensorEvaluationContext, state: SensorState) -> bool:
    """Did a run of the upload last requested succeed (so it claimed that file)?"""
    if state.requested is None or context.instance is None:
        return False
    runs = runs_of_upload(
        context.instance, state.requested.upload_key, statuses=[dg.DagsterRunStatus.SUCCESS]
    )
    return bool(runs)


def build_district_sensors(
    district_codes: Sequence[str],
    **kwargs: object,
) -> list[dg.SensorDefinition]:
    """One sensor per district (the codes usually come from the districts table)."""
    return [build_district_sensor(code, **kwargs) for code in district_codes]  # type: ignore[arg-type]


def build_operator_alert_sensor(
    monitored_jobs: Sequence[JobLike],
    *,
    interval_seconds: int | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """Email EAMS_OPERATOR_EMAILS when a run fails for good (a crash, not a bad file).

    A rejected file is a successful run (the district is told); this alert is for runs that
    failed: SFTP, database or SMTP unavailable, a bug. A run that Dagster will retry
    automatically is not reported until its last attempt fails.
    """

    @dg.run_failure_sensor(
        name="eams_operator_alerts",
        minimum_interval_seconds=interval_seconds or sensor_interval_seconds(),
        monitored_jobs=list(monitored_jobs),
        default_status=default_status,
        description="Emails EAMS_OPERATOR_EMAILS when an upload run fails (after its retries).",
    )
    def _alert(context: dg.RunFailureSensorContext, smtp: SmtpResource) -> dg.SkipReason | None:
        run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
        if run.tags.get(WILL_RETRY_TAG) == "true":
            return dg.SkipReason(f"run {run.run_id} will be retried; no alert yet")
        operators = operator_emails()
        if not operators:
            context.log.warning("EAMS_OPERATOR_EMAILS is not set: no operator alert sent")
            return dg.SkipReason("EAMS_OPERATOR_EMAILS is not set")
        upload_key = upload_key_of_run(run.tags)
        district = run.tags.get(DISTRICT_TAG)
        if district is None and upload_key:
            try:
                district = UploadRef.parse(upload_key).district
            except ValueError:
                district = None
        message = build_failure_email(
            operators=operators,
            sender=smtp.sender,
            district_code=district or "(unknown)",
            run_id=run.run_id,
            upload_key=upload_key,
            error_text=failure_text(context),
        )
        smtp.send(message)
        context.log.info(f"alerted {len(operators)} operator(s) about run {run.run_id}")
        return None

    return _alert


def failure_text(context: dg.RunFailureSensorContext) -> str:
    """What failed: step and error class with the first line of the message.

    Deliberately no traceback or exception detail (a database error's DETAIL can quote row
    values): the full error is in the run's logs in the Dagster UI.
    """
    lines = []
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if error is None:
            lines.append(f"step {event.step_key}: failed")
            continue
        while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError",):
            error = error.cause
        first = (error.message or "").strip().splitlines()[:1]
        text = first[0] if first else ""
        if len(text) > _MAX_ERROR_LINE:
            text = text[:_MAX_ERROR_LINE] + " [...]"
        head, sep, rest = text.partition(": ")
        if sep and head.split(".")[-1] == error.cls_name:  # "pkg.mod.Cls: message"
            text = rest
        text = f"{error.cls_name}: {text}"
        lines.append(f"step {event.step_key}: {text}")
    if not lines:
        message = (context.failure_event.message or "the run failed").strip().splitlines()
        lines.append(message[0][:_MAX_ERROR_LINE] if message else "the run failed")
    return "\n".join(lines)
