"""The runs of uploads: one sensor per code location, ``eams_upload_requests``, turns the
upload requests recorded in the database (sql/019) into runs of ``upload_job``, and the
check drops' requests (kind ``check``, sql/021) into runs of ``check_upload``.

Who records requests: a district sensor, for the students.csv it saw settle (it targets no
job itself: 2,000 sensors targeting the upload assets' job would make the Dagster UI load
2,000 sensor states on every page of those assets), and ``reprocess_uploads``, for the
uploads to run again. Every run is the same kind of run: its district's partition, its
upload as run config and tags (:func:`.partitions.upload_run_request`), plus

- a district sensor's: ``eams/file_size`` and ``eams/file_mtime`` (the run claims
  incoming/students.csv only if they still match) and ``eams/requested_by`` (the sensor);
  run key: the upload key (a run per upload, whatever happens to the tick);
- a reprocessing's: ``eams/reprocess`` (the id of the reprocess_uploads run that asked) and
  ``allow_older`` in the run config if it said so; run key ``reprocess:<run id>:<key>``.

The sensor reads the requests after the last one it handed out (its cursor), in order, and
takes those of the districts its code location serves (``EAMS_DISTRICT_SHARD``,
``EAMS_DISTRICTS``: every location reads all requests, each runs its own).
"""

from collections.abc import Callable, Mapping

import dagster as dg

from eams_pipeline.core.names import UploadRef
from eams_pipeline.core.outcome import UploadKind
from eams_pipeline.db import upload_requests as db_requests
from eams_pipeline.orchestration.check_job import CHECK_JOB_NAME, check_job, check_tags
from eams_pipeline.orchestration.jobs import UPLOAD_JOB_NAME
from eams_pipeline.orchestration.partitions import (
    DISTRICT_TAG,
    FILE_MTIME_TAG,
    FILE_SIZE_TAG,
    add_districts_request,
    upload_run_config,
    upload_run_request,
)
from eams_pipeline.orchestration.resources import DatabaseResource
from eams_pipeline.orchestration.sharding import districts_for_this_location

UPLOAD_REQUESTS_SENSOR_NAME = "eams_upload_requests"
REPROCESS_TAG = "eams/reprocess"
REQUESTED_BY_TAG = "eams/requested_by"
DEFAULT_INTERVAL_SECONDS = 15
DEFAULT_BATCH = 200  # run requests per tick at most


def run_request_for(request: db_requests.UploadRequest, requested_by: str) -> dg.RunRequest:
    """The run of one recorded request (``requested_by``: the district sensor's name): a run
    of ``check_upload`` for a check drop, else of ``upload_job``."""
    ref = UploadRef.parse(request.upload_key)
    if request.kind == UploadKind.CHECK:
        return dg.RunRequest(
            run_key=request.upload_key,
            job_name=CHECK_JOB_NAME,
            run_config=upload_run_config(request.upload_key),
            tags={
                FILE_SIZE_TAG: str(request.file_size),
                FILE_MTIME_TAG: str(request.file_mtime),
                REQUESTED_BY_TAG: requested_by,
                **check_tags(ref),
            },
        )
    if request.reprocess_run is None:
        return upload_run_request(
            ref,
            job_name=UPLOAD_JOB_NAME,
            run_key=request.upload_key,
            tags={
                DISTRICT_TAG: request.district,
                FILE_SIZE_TAG: str(request.file_size),
                FILE_MTIME_TAG: str(request.file_mtime),
                REQUESTED_BY_TAG: requested_by,
            },
        )
    return upload_run_request(
        ref,
        job_name=UPLOAD_JOB_NAME,
        run_key=f"reprocess:{request.reprocess_run}:{request.upload_key}",
        tags={REPROCESS_TAG: request.reprocess_run},
        ops={"upload_outcome": {"config": {"allow_older": True}}} if request.allow_older else None,
    )


def build_upload_requests_sensor(
    job: object,
    *,
    check: object = check_job,
    sensor_name_of: Callable[[str], str],
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
    batch: int = DEFAULT_BATCH,
    serves: Callable[[str], bool] | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    resources: Mapping[str, object] | None = None,
) -> dg.SensorDefinition:
    """The sensor requesting a run of ``job`` per recorded upload request (of ``check``, the
    check drops' job, per recorded check drop), for the districts
    this location serves (``serves``; default: EAMS_DISTRICT_SHARD/EAMS_DISTRICTS).
    ``sensor_name_of``: a district's sensor name (the tag naming who requested a run).
    With ``resources`` holding the location's ``db``, the sensor uses it directly."""
    takes = serves or (lambda code: bool(districts_for_this_location([code])))

    def tick(
        context: dg.SensorEvaluationContext, db: DatabaseResource
    ) -> dg.SensorResult | dg.SkipReason:
        after = int(context.cursor) if (context.cursor or "").isdigit() else 0
        with db.connect() as conn:
            pending = db_requests.pending_requests(conn, after, batch)
        if not pending:
            return dg.SkipReason("no upload requested")
        mine = [r for r in pending if takes(r.district)]
        cursor = str(pending[-1].request_id)
        if not mine:
            return dg.SensorResult(
                skip_reason=f"{len(pending)} request(s) for districts of other locations",
                cursor=cursor,
            )
        context.log.info(
            "requesting runs of "
            + ", ".join(r.upload_key for r in mine[:20])
            + (f" and {len(mine) - 20} more" if len(mine) > 20 else "")
        )
        return dg.SensorResult(
            run_requests=[run_request_for(r, sensor_name_of(r.district)) for r in mine],
            # the districts' partition keys, should one not be there yet (no write if it is)
            dynamic_partitions_requests=[add_districts_request(sorted({r.district for r in mine}))],
            cursor=cursor,
        )

    description = (
        "Starts one upload_job run per upload requested by a district sensor (a settled "
        "incoming/students.csv) or by reprocess_uploads, and one check_upload run per check "
        "drop (a settled check/students.csv), in the order requested."
    )
    bound = (resources or {}).get("db")
    if isinstance(bound, DatabaseResource):

        @dg.sensor(
            name=UPLOAD_REQUESTS_SENSOR_NAME,
            jobs=[job, check],  # type: ignore[list-item]
            minimum_interval_seconds=interval_seconds,
            default_status=default_status,
            description=description,
        )
        def _bound(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
            return tick(context, bound)

        return _bound

    @dg.sensor(
        name=UPLOAD_REQUESTS_SENSOR_NAME,
        jobs=[job, check],  # type: ignore[list-item]
        minimum_interval_seconds=interval_seconds,
        default_status=default_status,
        description=description,
    )
    def _sensor(
        context: dg.SensorEvaluationContext, db: DatabaseResource
    ) -> dg.SensorResult | dg.SkipReason:
        return tick(context, db)

    return _sensor
