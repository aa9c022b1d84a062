"""The upload job: the four upload assets, for one upload per run (partition: its district;
the upload: run config and tags, see :mod:`.partitions`); the revert job: `eams uploads
revert` launched from the launchpad."""

import dagster as dg
from pydantic import Field

from eams_pipeline import config as eams_config
from eams_pipeline.orchestration.assets import GROUP
from eams_pipeline.orchestration.partitions import DISTRICTS, district_tags
from eams_pipeline.orchestration.resources import DatabaseResource

UPLOAD_JOB_NAME = "upload_job"

# Every run of an upload is tagged with its district, whoever launches it (sensor,
# reprocess_uploads, launchpad): dagster.yaml limits runs per district to one. The upload
# itself is the run config `resources: {upload_ref: {config: {key: ...}}}`, required: a run
# without it (e.g. a backfill of district partitions) is refused before it starts.
upload_job = dg.define_asset_job(
    UPLOAD_JOB_NAME,
    selection=dg.AssetSelection.groups(GROUP),
    config=dg.PartitionedConfig(
        partitions_def=DISTRICTS,
        run_config_for_partition_key_fn=lambda _key: {},
        tags_for_partition_key_fn=district_tags,
    ),
    # the four steps run one after another: in one process, without a subprocess per step
    executor_def=dg.in_process_executor,
    description=(
        "One upload of one district (partition: the district; run config resources.upload_ref"
        ".config.key: the upload): claim and archive students.csv, apply it, publish the "
        "error report, email the district."
    ),
)


REVERT_JOB_NAME = "revert_upload_job"


class RevertConfig(dg.Config):
    upload_key: str = Field(description="The upload to revert, e.g. D001-20260114T020000123456Z.")
    cascade: bool = Field(
        default=False,
        description="Revert the later uploads that changed the same students first, newest first.",
    )
    reverted_by: str = Field(default="", description="Who reverts (default: the run id).")


@dg.op(description="Put every student the upload changed back as it was before it.")
def revert_upload_op(
    context: dg.OpExecutionContext, config: RevertConfig, db: DatabaseResource
) -> dg.Output[list[str]]:
    from eams_pipeline.services.revert import RevertRefused, revert_upload

    try:
        with db.connect() as conn:
            done = revert_upload(
                conn,
                config.upload_key,
                reverted_by=config.reverted_by or f"dagster run {context.run.run_id}",
                cascade=config.cascade,
                retention_days=eams_config.revert_retention_days(),
            )
    except (RevertRefused, LookupError) as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    for r in done:
        context.log.info(f"reverted {r.upload_key}: {r.counts}")
    return dg.Output(
        [r.upload_key for r in done],
        metadata={
            "reverted": dg.MetadataValue.json({r.upload_key: r.counts for r in done}),
        },
    )


@dg.job(
    name=REVERT_JOB_NAME,
    description="Revert one applied upload (launchpad config: upload_key, cascade).",
    executor_def=dg.in_process_executor,
)
def revert_job() -> None:
    revert_upload_op()
