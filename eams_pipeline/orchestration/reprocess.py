"""Reprocessing historical uploads from the Dagster UI.

    reprocess_uploads         launchpad job: districts and days, or upload keys; records the
                              selected uploads (services.reprocess) in reprocess_requests
    eams_reprocess_uploads    sensor: one run of upload_job per recorded upload, in order,
                              for the districts this code location serves

Each reprocessed upload is a run of its own, as the sensor's would be: partition its
district, run config its upload (``allow_older`` if the request said so), tags
``eams/district``, ``eams/upload_key`` and ``eams/reprocess`` (the id of the
``reprocess_uploads`` run that asked: the runs page filters a request's runs by it).
"""

import datetime as dt
from collections.abc import Callable

import dagster as dg
from pydantic import Field

from eams_pipeline import config as eams_config
from eams_pipeline.db import reprocess as db_reprocess
from eams_pipeline.orchestration.partitions import (
    UploadRef,
    add_districts_request,
    upload_run_request,
)
from eams_pipeline.orchestration.resources import ArchiveResource, DatabaseResource
from eams_pipeline.orchestration.sharding import districts_for_this_location
from eams_pipeline.services.reprocess import (
    DEFAULT_MAX_UPLOADS,
    ReprocessRefused,
    Selection,
    request_reprocessing,
)

REPROCESS_JOB_NAME = "reprocess_uploads"
REPROCESS_SENSOR_NAME = "eams_reprocess_uploads"
REPROCESS_TAG = "eams/reprocess"
DEFAULT_INTERVAL_SECONDS = 30
DEFAULT_BATCH = 100  # run requests per tick at most
PREVIEW = 50
Clock = Callable[[], dt.datetime]


class ReprocessConfig(dg.Config):
    districts: list[str] = Field(
        default_factory=list, description="District codes whose uploads to reprocess."
    )
    received_from: str = Field(
        default="",
        description="First day (YYYY-MM-DD, the district's local date), included; empty: as "
        "far back as the archive keeps uploads (EAMS_ARCHIVE_RETENTION_DAYS).",
    )
    received_to: str = Field(
        default="", description="Last day (YYYY-MM-DD, local date), included; empty: today."
    )
    upload_keys: list[str] = Field(
        default_factory=list,
        description="Uploads to reprocess by key, e.g. D001-20260114T020000123456Z (also of "
        "uploads made before the district partitions).",
    )
    allow_older: bool = Field(
        default=False,
        description="Apply an upload even though a newer upload of its district was applied "
        "(an explicit decision: it rolls students back). Without it such an upload is "
        "superseded: its report is regenerated, nothing applied, the district not emailed.",
    )
    max_uploads: int = Field(
        default=DEFAULT_MAX_UPLOADS,
        description="Refuse a selection of more uploads than this (a run each).",
    )


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def build_reprocess_job(clock: Clock = _utcnow) -> dg.JobDefinition:
    @dg.op(
        name="request_reprocessing",
        description=(
            "Selects the uploads to reprocess (within the archive's retention) and records "
            "them; the eams_reprocess_uploads sensor then starts one upload_job run each."
        ),
    )
    def request_reprocessing_op(
        context: dg.OpExecutionContext,
        config: ReprocessConfig,
        db: DatabaseResource,
        archive: ArchiveResource,
    ) -> dg.Output[list[str]]:
        try:
            selection = Selection.parse(
                districts=config.districts,
                received_from=config.received_from,
                received_to=config.received_to,
                upload_keys=config.upload_keys,
            )
            with db.connect() as conn:
                plan = request_reprocessing(
                    conn,
                    archive.get(),
                    selection,
                    requested_by=context.run.run_id,
                    allow_older=config.allow_older,
                    now=clock(),
                    archive_days=eams_config.retention_settings().archive_days,
                    max_uploads=config.max_uploads,
                )
        except ReprocessRefused as exc:
            raise dg.Failure(f"nothing reprocessed: {exc}", allow_retries=False) from exc
        keys = [c.upload_key for c in plan.selected]
        context.log.info(
            f"{len(keys)} upload(s) to reprocess, {len(plan.skipped)} skipped; their runs are "
            f"tagged {REPROCESS_TAG}={context.run.run_id}"
        )
        for key, why in plan.skipped[:PREVIEW]:
            context.log.warning(f"skipped {key}: {why}")
        return dg.Output(
            keys,
            metadata={
                "uploads": dg.MetadataValue.int(len(keys)),
                "skipped": dg.MetadataValue.int(len(plan.skipped)),
                "runs_tag": f"{REPROCESS_TAG}={context.run.run_id}",
                "allow_older": dg.MetadataValue.bool(config.allow_older),
                "selected": dg.MetadataValue.md(_table(plan.selected)),
                "skipped_uploads": dg.MetadataValue.json(
                    [{"upload_key": k, "why": w} for k, w in plan.skipped[:PREVIEW]]
                ),
            },
        )

    @dg.job(
        name=REPROCESS_JOB_NAME,
        description=(
            "Reprocess historical uploads, each in its own upload_job run (launchpad config: "
            "districts and received_from/received_to, or upload_keys; allow_older)."
        ),
        executor_def=dg.in_process_executor,
    )
    def reprocess_job() -> None:
        request_reprocessing_op()

    return reprocess_job


def _table(selected) -> str:
    if not selected:
        return "No upload selected."
    lines = ["| upload | district | received (UTC) | status |", "|---|---|---|---|"]
    for c in selected[:PREVIEW]:
        status = c.status or "received (not recorded)"
        lines.append(
            f"| {c.upload_key} | {c.district} | {c.received_at:%Y-%m-%d %H:%M} | {status} |"
        )
    if len(selected) > PREVIEW:
        lines.append(f"\n… and {len(selected) - PREVIEW} more.")
    return "\n".join(lines)


def build_reprocess_sensor(
    job: object,
    *,
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
    batch: int = DEFAULT_BATCH,
    serves: Callable[[str], bool] | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """The sensor turning recorded reprocessing requests into runs of ``job``.

    It reads the requests after the last one it handed out (its cursor), in order, and
    requests a run for each of a district this location serves (``serves``; default: the
    location's EAMS_DISTRICT_SHARD/EAMS_DISTRICTS); the other locations take the others.
    """
    takes = serves or (lambda code: bool(districts_for_this_location([code])))

    @dg.sensor(
        name=REPROCESS_SENSOR_NAME,
        job=job,  # type: ignore[arg-type]
        minimum_interval_seconds=interval_seconds,
        default_status=default_status,
        description=(
            "Starts one upload_job run per upload recorded by reprocess_uploads, in the order "
            "they were received."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext, db: DatabaseResource
    ) -> dg.SensorResult | dg.SkipReason:
        after = int(context.cursor) if (context.cursor or "").isdigit() else 0
        with db.connect() as conn:
            items = db_reprocess.pending_requests(conn, after, batch)
        if not items:
            return dg.SkipReason("no reprocessing requested")
        mine = [i for i in items if takes(i.district)]
        requests = [
            upload_run_request(
                UploadRef.parse(i.upload_key),
                run_key=f"reprocess:{i.requested_by}:{i.upload_key}",
                tags={REPROCESS_TAG: i.requested_by},
                ops={"upload_outcome": {"config": {"allow_older": True}}}
                if i.allow_older
                else None,
            )
            for i in mine
        ]
        cursor = str(items[-1].item_id)
        if not requests:
            return dg.SensorResult(
                skip_reason=f"{len(items)} request(s) for districts of other locations",
                cursor=cursor,
            )
        context.log.info(f"reprocessing {len(requests)} upload(s)")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[add_districts_request(sorted({i.district for i in mine}))],
            cursor=cursor,
        )

    return _sensor
