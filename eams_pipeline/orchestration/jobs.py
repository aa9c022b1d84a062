"""The upload job: the four upload assets, for one upload (partition) per run."""

from __future__ import annotations

import dagster as dg

from eams_pipeline.orchestration.assets import GROUP
from eams_pipeline.orchestration.partitions import UPLOADS, district_tags

UPLOAD_JOB_NAME = "upload_job"

# Every run of an upload is tagged with its district, whoever launches it (sensor, backfill
# from the job's partitions page, launchpad): dagster.yaml limits runs per district to one.
upload_job = dg.define_asset_job(
    UPLOAD_JOB_NAME,
    selection=dg.AssetSelection.groups(GROUP),
    config=dg.PartitionedConfig(
        partitions_def=UPLOADS,
        run_config_for_partition_key_fn=lambda _key: {},
        tags_for_partition_key_fn=district_tags,
    ),
    # the four steps run one after another: in one process, without a subprocess per step
    executor_def=dg.in_process_executor,
    description=(
        "One upload of one district: claim and archive students.csv, apply it, publish the "
        "error report, email the district."
    ),
)
