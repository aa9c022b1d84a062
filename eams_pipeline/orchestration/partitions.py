"""The partition model: the upload assets are partitioned by district; an upload is a run.

- **Partitions**: the dynamic partitions ``districts``, one key per district code (``D001``).
  Its keys change only when a district is added: ``eams_upload_requests`` adds a district's
  key with its first run request, and the ``eams_district_partitions`` sensor adds every
  district of the code location (:func:`build_district_partitions_sensor`). Keys are never
  deleted (a deleted key hides its history in the UI). Dagster identifies a dynamic partitions
  definition by a hash of all its keys and rebuilds every partitioned asset's status from
  every past event when it changes: with a key per district, not per upload, that happens
  when a district is added, not with every upload, and the status is computed over 2,000
  keys, not 730,000 a year.
- **The upload** a run processes is its run config, ``resources: {upload_ref: {config: {key:
  D001-20260114T020000123456Z}}}`` (so a re-execution re-runs the same upload), and its run
  tags ``eams/upload_key`` and ``eams/district`` (the runs page's filters; the per-district
  concurrency limit of dagster.yaml). Every materialization's metadata names it.

An upload key is ``<district code>-<UTC time to the microsecond>``, e.g.
``D001-20260114T020000000000Z`` (``eams_pipeline.core.names.make_upload_key``): the time
the pipeline took the file in.

Before this model, each upload was a partition of the dynamic partitions ``uploads``
(:data:`LEGACY_UPLOADS_PARTITIONS`): those runs carry the upload key in ``dagster/partition``
(:func:`upload_key_of_run`, and ``eams dagster migrate-runs`` tags them as new runs are).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

from eams_pipeline.core.names import UploadRef, is_upload_key

DISTRICTS = dg.DynamicPartitionsDefinition(name="districts")
# the partitions of the model before: one per upload (kept in storage, no longer used)
LEGACY_UPLOADS_PARTITIONS = "uploads"

# run tags
DISTRICT_TAG = "eams/district"
UPLOAD_KEY_TAG = "eams/upload_key"
FILE_SIZE_TAG = "eams/file_size"
FILE_MTIME_TAG = "eams/file_mtime"
PARTITION_TAG = "dagster/partition"

# the resource holding the run's upload (run config ``resources: {upload_ref: {config: {key}}}``)
UPLOAD_RESOURCE = "upload_ref"

def district_tags(partition_key: str) -> dict[str, str]:
    """The run tags of a run of a district partition (the per-district concurrency limit)."""
    return {DISTRICT_TAG: partition_key}


def upload_tags(ref: UploadRef) -> dict[str, str]:
    """The run tags every run of an upload carries, whoever launches it."""
    return {DISTRICT_TAG: ref.district, UPLOAD_KEY_TAG: ref.key}


def upload_run_config(key: str, ops: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run config of a run of upload ``key`` (and the steps' config, e.g.
    ``{"upload_outcome": {"config": {"allow_older": True}}}``)."""
    config: dict[str, Any] = {"resources": {UPLOAD_RESOURCE: {"config": {"key": key}}}}
    if ops:
        config["ops"] = dict(ops)
    return config


def upload_run_request(
    ref: UploadRef,
    *,
    run_key: str,
    tags: Mapping[str, str] | None = None,
    ops: Mapping[str, Any] | None = None,
    job_name: str | None = None,
) -> dg.RunRequest:
    """The run of one upload: its district's partition, its upload as run config and tags
    (``job_name``: the upload job's, for a sensor that targets more than one job)."""
    return dg.RunRequest(
        run_key=run_key,
        job_name=job_name,
        partition_key=ref.district,
        run_config=upload_run_config(ref.key, ops),
        tags={**(tags or {}), **upload_tags(ref)},
    )


def add_districts_request(codes: Iterable[str]) -> dg.AddDynamicPartitionsRequest:
    """Add these district keys to ``districts`` (keys already there are left alone)."""
    return DISTRICTS.build_add_request(list(codes))


def upload_key_of_run(tags: Mapping[str, str]) -> str | None:
    """The upload a run processed: its ``eams/upload_key`` tag, or for a run of the model
    before (one partition per upload) its partition key, if that is an upload key."""
    key = tags.get(UPLOAD_KEY_TAG)
    if key:
        return key
    legacy = tags.get(PARTITION_TAG)
    if legacy and is_upload_key(legacy):
        return legacy
    return None


def runs_of_upload(
    instance: dg.DagsterInstance, key: str, *, statuses: Sequence[dg.DagsterRunStatus] = ()
) -> list[dg.DagsterRun]:
    """Every run of upload ``key``: tagged with it, then (the model before) partitioned by it."""
    found: dict[str, dg.DagsterRun] = {}
    for tag in (UPLOAD_KEY_TAG, PARTITION_TAG):
        for run in instance.get_runs(
            filters=dg.RunsFilter(tags={tag: key}, statuses=list(statuses))
        ):
            found.setdefault(run.run_id, run)
    return list(found.values())


def build_district_partitions_sensor(
    district_codes: Sequence[str],
    *,
    interval_seconds: int = 300,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """Keeps the ``districts`` partitions in step with this code location's districts: adds
    the keys missing (a location serves the districts of the database, or of its shard, read
    when it loads). A district removed from master data keeps its key and its history."""
    codes = list(district_codes)

    @dg.sensor(
        name="eams_district_partitions",
        minimum_interval_seconds=interval_seconds,
        default_status=default_status,
        description=(
            "Adds a partition key to `districts` for every district this code location "
            "serves (the upload assets are partitioned by district)."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        existing = set(context.instance.get_dynamic_partitions(DISTRICTS.name))
        missing = [c for c in codes if c not in existing]
        if not missing:
            return dg.SkipReason(f"the {len(codes)} district(s) of this location have partitions")
        context.log.info(f"adding {len(missing)} district partition(s): {', '.join(missing[:20])}")
        return dg.SensorResult(dynamic_partitions_requests=[add_districts_request(missing)])

    return _sensor
