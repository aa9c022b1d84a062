"""The district sensors: one per district watching its SFTP incoming/ (and check/).

A district sensor only lists and stats ``incoming/`` and ``check/`` (it never downloads) and
requests one run per upload (per check drop) once ``students.csv`` has settled (see
:mod:`eams_pipeline.core.settle`): it records the request in the database, and the
location's ``eams_upload_requests`` sensor starts the run (:mod:`.upload_request_sensor`; a
district sensor targets no job, so that the UI does not load every district sensor's state
on each page of the upload assets). SFTP failures:

- the server cannot be reached (:class:`SftpTransientError`): the tick is skipped with the
  reason and the next tick tries again;
- wrong credentials or host key (:class:`SftpAuthError`, :class:`SftpHostKeyError`), or any
  other SFTP error: the tick fails, red in the UI, with the message.
"""

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import dagster as dg

from eams_pipeline.config import district_cache_seconds, sensor_interval_seconds, settle_seconds
from eams_pipeline.core.alert_rules import track_other_files
from eams_pipeline.core.names import CHECK, UPLOAD_NAME
from eams_pipeline.core.outcome import UploadKind
from eams_pipeline.core.settle import Requested, SensorState, decide, decide_check, listed
from eams_pipeline.db.upload_requests import record_sensor_request
from eams_pipeline.io.sftp import SftpFileNotFoundError, SftpTransientError
from eams_pipeline.orchestration.district_directory import read_district
from eams_pipeline.orchestration.partitions import runs_of_upload
from eams_pipeline.orchestration.resources import DatabaseResource, SftpResource, SmtpResource
from eams_pipeline.orchestration.upload_request_sensor import UPLOAD_REQUESTS_SENSOR_NAME
from eams_pipeline.services.alerting import send_district_alerts

Clock = Callable[[], dt.datetime]


def sensor_name(district_code: str) -> str:
    """``sftp_<code>``, one name per code: ``_`` is written ``__`` and ``-`` ``_h``."""
    return "sftp_" + district_code.replace("_", "__").replace("-", "_h")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
            f"Watches district {district_code}'s SFTP incoming/ and check/ for students.csv; "
            f"requests one run per upload (per check drop) once it has been unchanged for "
            f"{settle_window:g}s."
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
                check_files = session.list_dir(CHECK)  # [] when there is no check/
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
        check = decide_check(
            check_files,
            state,
            now,
            district=district.code,
            settle_seconds=settle_window,
            requested_run_succeeded=_requested_run_succeeded(context, state.check),
            upload_key=decision.request.upload_key if decision.request else None,
        )
        if decision.ignored:
            context.log.info(f"left alone in incoming/: {listed(decision.ignored, 10)}")
        if check.ignored:
            context.log.info(f"left alone in {CHECK}/: {listed(check.ignored, 10)}")
        waiting = any(f.name == UPLOAD_NAME for f in files) or state.requested is not None
        alerts = send_district_alerts(
            db.connect,
            smtp,
            context.log,
            district,
            now,
            files,
            replace(state, others=track_other_files(files, state.others, now)),
            settle_window,
            file_waiting=waiting,
        )
        notes = alerts.notes
        cursor = replace(
            decision.state,
            others=alerts.others,
            digest_day=alerts.digest_day,
            check_watched=check.state.watched,
            check_requested=check.state.requested,
        ).to_cursor()
        requests = [
            (kind, d.request)
            for kind, d in ((UploadKind.UPLOAD, decision), (UploadKind.CHECK, check))
            if d.request is not None
        ]
        # check/ is mentioned only when something is (or was) there
        check_said = [check.reason] if check_files or state.check != SensorState() else []
        if not requests:
            reason = " | ".join([*notes, decision.reason, *check_said])
            return dg.SensorResult(skip_reason=reason, cursor=cursor)
        for d in (decision, check):
            if d.request is not None:
                context.log.info(d.reason)
        return request_uploads(db, district.code, requests, cursor)

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


def request_upload(
    db: DatabaseResource, district_code: str, request: Requested, cursor: str
) -> dg.SensorResult:
    """A settled incoming/students.csv: its upload requested (see :func:`request_uploads`)."""
    return request_uploads(db, district_code, [(UploadKind.UPLOAD, request)], cursor)


def request_uploads(
    db: DatabaseResource,
    district_code: str,
    requests: Sequence[tuple[UploadKind, Requested]],
    cursor: str,
) -> dg.SensorResult:
    """Settled students.csv files (incoming/'s upload, check/'s check drop): each requested
    (recorded with the file's size and time, which the run's claim checks; the
    eams_upload_requests sensor starts its run) before the tick's cursor moves on.
    Recording one again (a tick evaluated twice) changes nothing."""
    with db.connect() as conn:
        for kind, request in requests:
            record_sensor_request(
                conn, district_code, request.upload_key, request.size, request.mtime, kind
            )
    said = "; ".join(
        f"requested {'upload' if kind == UploadKind.UPLOAD else 'check'} {request.upload_key} "
        f"({request.size} bytes)"
        for kind, request in requests
    )
    return dg.SensorResult(
        skip_reason=f"{said}: its run is started by {UPLOAD_REQUESTS_SENSOR_NAME}",
        cursor=cursor,
    )


def _requested_run_succeeded(context: dg.SensorEvaluationContext, state: SensorState) -> bool:
    """Did a run of the upload (or check drop: ``state.check``) last requested succeed (so
    it claimed that file)?"""
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


