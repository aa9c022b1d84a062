"""Reprocessing historical uploads from the Dagster UI: the launchpad job
``reprocess_uploads`` (districts and days, or upload keys) records the uploads it selects
(:mod:`eams_pipeline.services.reprocess`) as upload requests; the ``eams_upload_requests``
sensor (:mod:`.upload_request_sensor`) then starts one run of upload_job each, in order.

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
from eams_pipeline.orchestration.resources import ArchiveResource, DatabaseResource
from eams_pipeline.orchestration.upload_request_sensor import REPROCESS_TAG
from eams_pipeline.services.reprocess import (
    DEFAULT_MAX_UPLOADS,
    ReprocessRefused,
    Selection,
    request_reprocessing,
)

REPROCESS_JOB_NAME = "reprocess_uploads"
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
            "them; the eams_upload_requests sensor then starts one upload_job run each."
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
