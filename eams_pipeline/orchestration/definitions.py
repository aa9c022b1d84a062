"""Building the code location: assets, the upload job, one sensor per district, alerts."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from eams_pipeline.db.connection import connect
from eams_pipeline.db.districts import list_districts
from eams_pipeline.orchestration.assets import UPLOAD_ASSETS, UPLOAD_CHECKS
from eams_pipeline.orchestration.jobs import revert_job, upload_job
from eams_pipeline.orchestration.resources import default_resources
from eams_pipeline.orchestration.sensors import (
    build_district_sensors,
    build_operator_alert_sensor,
)


def district_codes_from_database() -> list[str]:
    """The districts in EAMS_DATABASE_URL (reload the code location after adding one)."""
    with connect() as conn:
        return [d.code for d in list_districts(conn)]


def build_definitions(
    district_codes: Sequence[str] | None = None,
    *,
    resources: dict[str, object] | None = None,
    **sensor_kwargs: object,
) -> dg.Definitions:
    codes = district_codes_from_database() if district_codes is None else list(district_codes)
    return dg.Definitions(
        assets=UPLOAD_ASSETS,
        asset_checks=UPLOAD_CHECKS,
        jobs=[upload_job, revert_job],
        sensors=[
            *build_district_sensors(codes, upload_job, **sensor_kwargs),
            build_operator_alert_sensor([upload_job]),
        ],
        resources=resources if resources is not None else default_resources(),
    )
