"""Building the code location: assets, the upload job, the check drops' job, one sensor per
district and the sensor starting the uploads' and checks' runs, alerts, the district
partitions, reprocessing."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sequence

import dagster as dg

from eams_pipeline.config import sensor_interval_seconds
from eams_pipeline.db.connection import connect
from eams_pipeline.db.districts import list_districts
from eams_pipeline.orchestration.assets import UPLOAD_ASSETS, UPLOAD_CHECKS
from eams_pipeline.orchestration.check_job import check_job
from eams_pipeline.orchestration.decisions import build_decision_sensor
from eams_pipeline.orchestration.district_sensors import build_district_sensors, sensor_name
from eams_pipeline.orchestration.failure_sensor import build_operator_alert_sensor
from eams_pipeline.orchestration.fleet_status import (
    build_fleet_status_asset,
    build_fleet_status_job,
    build_fleet_status_schedule,
)
from eams_pipeline.orchestration.jobs import revert_job, upload_job
from eams_pipeline.orchestration.partitions import (
    UPLOAD_RESOURCE,
    build_district_partitions_sensor,
)
from eams_pipeline.orchestration.reprocess_job import build_reprocess_job
from eams_pipeline.orchestration.resources import UploadResource, default_resources
from eams_pipeline.orchestration.run_retention_job import (
    build_run_retention_job,
    build_run_retention_schedule,
)
from eams_pipeline.orchestration.sharding import districts_for_this_location
from eams_pipeline.orchestration.upload_request_sensor import (
    DEFAULT_INTERVAL_SECONDS,
    build_upload_requests_sensor,
)
from eams_pipeline.orchestration.upload_retention_job import (
    build_retention_job,
    build_retention_schedule,
)


def district_codes_from_database() -> list[str]:
    """The districts in EAMS_DATABASE_URL that this code location serves (all of them unless
    EAMS_DISTRICT_SHARD or EAMS_DISTRICTS says otherwise, see :mod:`.sharding`); reload the
    code location after adding one."""
    with connect() as conn:
        return districts_for_this_location(d.code for d in list_districts(conn))


def is_run_worker() -> bool:
    """Is this process a run worker? The code server starts every run in a child process
    (multiprocessing, spawned) that loads the code location again; the Docker and Kubernetes
    launchers start ``dagster api execute_run``."""
    return multiprocessing.parent_process() is not None or "execute_run" in sys.argv


def build_definitions(
    district_codes: Sequence[str] | None = None,
    *,
    resources: dict[str, object] | None = None,
    **sensor_kwargs: object,
) -> dg.Definitions:
    if district_codes is not None:
        codes = list(district_codes)
    elif is_run_worker():
        # A run needs its job, not the district sensors: no districts query and no 2,000
        # sensor definitions in every run worker (bench/RESULTS.md, "Fleet": CPU per run).
        codes = []
    else:
        codes = district_codes_from_database()
    retention_job = build_retention_job()
    run_retention_job = build_run_retention_job()
    fleet_job = build_fleet_status_job()
    reprocess_job = build_reprocess_job()
    resources = resources if resources is not None else default_resources()
    # the upload of a run of upload_job: run config, given at launch
    resources = {UPLOAD_RESOURCE: UploadResource.configure_at_launch(), **resources}
    sensor_kwargs.setdefault("resources", resources)
    return dg.Definitions(
        assets=[*UPLOAD_ASSETS, build_fleet_status_asset()],
        asset_checks=UPLOAD_CHECKS,
        jobs=[
            upload_job,
            check_job,
            retention_job,
            revert_job,
            reprocess_job,
            run_retention_job,
            fleet_job,
        ],
        schedules=[
            build_retention_schedule(retention_job),
            build_run_retention_schedule(run_retention_job),
            build_fleet_status_schedule(fleet_job),
        ],
        sensors=[
            *build_district_sensors(codes, **sensor_kwargs),
            build_upload_requests_sensor(
                upload_job,
                check=check_job,
                sensor_name_of=sensor_name,
                resources=resources,
                # no later than the district sensors tick (the demo's 5 s), at most 15 s
                interval_seconds=min(DEFAULT_INTERVAL_SECONDS, sensor_interval_seconds()),
            ),
            build_operator_alert_sensor([upload_job, check_job]),
            build_district_partitions_sensor(codes),
            # none in a run worker (codes is empty there): runs need no sensor
            *([build_decision_sensor(upload_job, codes)] if codes else []),
        ],
        resources=resources,
    )
