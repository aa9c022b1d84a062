"""Every place a person looks in Dagster says what happened to an upload, and what was
decided about it since.

- Every run of an upload carries the tag ``eams/outcome`` = the upload's status (the Runs
  page filters ``eams/outcome: held`` to list what waits for a person), and
  ``eams/decision`` (``approved by alice``, ``discarded by bob``, ``reverted by carol``)
  once there is one. The upload's ``upload_outcome`` step sets them on every run of its
  partition, so the first run of a held upload stops saying ``held`` once it is approved.
- Decisions made outside the upload's own run (``eams uploads approve|discard|revert``
  without Dagster running, the revert job, a newer upload superseding a held one) are
  recorded in the database only. The ``eams_decisions`` sensor notices them (the uploads
  whose status moved on since their partition last showed it, ``uploads.reported_status``)
  and requests one follow-up run of the upload's partition: it re-evaluates the
  ``change_guard`` check, re-materializes ``upload_outcome`` (status, decision), updates the
  tags, republishes the error file, emails the district (approved after review by whom,
  discarded, what a revert put back) and removes the raw file from ``processed/``, the
  same steps as any run of the upload. The CLI needs neither Dagster nor its storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

from eams_pipeline.config import sensor_interval_seconds
from eams_pipeline.core.names import UploadRef
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.orchestration.partitions import (
    UPLOAD_KEY_TAG,
    runs_of_upload,
    upload_run_request,
)
from eams_pipeline.orchestration.resources import DatabaseResource

DECISIONS_SENSOR = "eams_decisions"
OUTCOME_TAG = "eams/outcome"
DECISION_TAG = "eams/decision"
FOLLOW_UP_TAG = "eams/follow_up"  # the status a follow-up run was requested for
# runs of an upload whose tags are kept up to date (an upload has one run, plus one per
# re-execution, approval or follow-up)
MAX_RUNS_TAGGED = 100
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def decision_text(upload: db_uploads.UploadRow) -> str | None:
    """What was decided about the upload since its outcome, e.g. `approved by alice`,
    `discarded by bob`, `approved by alice, then reverted by carol`; None: nothing."""
    said = []
    if upload.decision:
        said.append(f"{upload.decision} by {upload.decided_by or 'an operator'}")
    if upload.reverted_at is not None:
        said.append(f"reverted by {upload.reverted_by or 'an operator'}")
    return ", then ".join(said)[:250] or None


def outcome_tags(upload: db_uploads.UploadRow) -> dict[str, str]:
    tags = {OUTCOME_TAG: str(upload.status)}
    decision = decision_text(upload)
    if decision:
        tags[DECISION_TAG] = decision
    return tags


def tag_upload_runs(
    instance: dg.DagsterInstance, upload: db_uploads.UploadRow, current_run_id: str | None
) -> int:
    """Tag every run of the upload (and the current one) with its outcome and decision;
    returns how many runs were tagged."""
    tags = outcome_tags(upload)
    runs = runs_of_upload(instance, upload.upload_key)[:MAX_RUNS_TAGGED]
    run_ids = {r.run_id for r in runs if any(r.tags.get(k) != v for k, v in tags.items())}
    if current_run_id:
        run_ids.add(current_run_id)
    for run_id in sorted(run_ids):
        instance.add_run_tags(run_id, tags)
    return len(run_ids)


def _busy(instance: dg.DagsterInstance, upload_key: str) -> bool:
    """Is a run of the upload queued or running? (it reports the status)"""
    return bool(runs_of_upload(instance, upload_key, statuses=_ACTIVE))


def follow_up_requests(
    instance: dg.DagsterInstance, changed: Sequence[db_uploads.Unreported]
) -> tuple[list[dg.RunRequest], list[str]]:
    """One run request per upload whose status moved on (its run key: the upload and the
    new status, so a decision gets one follow-up run however often the sensor ticks), none
    while a run of the upload is queued or running; and the keys left for later."""
    requests, waiting = [], []
    for u in changed:
        if _busy(instance, u.upload_key):
            waiting.append(u.upload_key)
            continue
        requests.append(
            upload_run_request(
                UploadRef.parse(u.upload_key),
                run_key=f"{u.upload_key}:{u.status}",
                tags={FOLLOW_UP_TAG: str(u.status)},
            )
        )
    return requests, waiting


def build_decision_sensor(
    job: Any,
    district_codes: Sequence[str],
    *,
    interval_seconds: int | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    batch: int = 100,
) -> dg.SensorDefinition:
    """The sensor that reflects decisions made outside Dagster (see the module docstring),
    for the districts of this code location."""
    codes = sorted(set(district_codes))

    @dg.sensor(
        name=DECISIONS_SENSOR,
        job=job,
        minimum_interval_seconds=interval_seconds or sensor_interval_seconds(),
        default_status=default_status,
        description=(
            "Requests a follow-up run of an upload whose status changed outside its runs "
            "(eams uploads approve/discard/revert, the revert job, superseded): the "
            "change_guard check, the eams/outcome tag, the district's email and the raw "
            "file's removal then say what was decided."
        ),
    )
    def _decisions(
        context: dg.SensorEvaluationContext, db: DatabaseResource
    ) -> dg.SensorResult | dg.SkipReason:
        if not codes:
            return dg.SkipReason("no district in this code location")
        with db.connect() as conn:
            changed = db_uploads.unreported(conn, codes, batch)
        if not changed:
            return dg.SkipReason("no decision made outside Dagster waits to be reflected")
        requests, waiting = follow_up_requests(context.instance, changed)
        if waiting:
            context.log.info(f"a run of {', '.join(waiting)} is in progress: next tick")
        for r in requests:
            context.log.info(
                f"upload {r.tags[UPLOAD_KEY_TAG]} is {r.tags[FOLLOW_UP_TAG]} now: follow-up run"
            )
        return dg.SensorResult(run_requests=requests)

    return _decisions
