"""The operators' crash alert: a run failure sensor emailing EAMS_OPERATOR_EMAILS when an
upload's run fails for good (after its retries)."""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from eams_pipeline.config import operator_emails, sensor_interval_seconds
from eams_pipeline.core.names import UploadRef
from eams_pipeline.core.notifications import build_failure_email
from eams_pipeline.orchestration.partitions import DISTRICT_TAG, upload_key_of_run
from eams_pipeline.orchestration.resources import SmtpResource

JobLike = Any  # a JobDefinition or the unresolved asset job of define_asset_job
WILL_RETRY_TAG = "dagster/will_retry"
_MAX_ERROR_LINE = 300


def build_operator_alert_sensor(
    monitored_jobs: Sequence[JobLike],
    *,
    interval_seconds: int | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """Email EAMS_OPERATOR_EMAILS when a run fails for good (a crash, not a bad file).

    A rejected file is a successful run (the district is told); this alert is for runs that
    failed: SFTP, database or SMTP unavailable, a bug. A run that Dagster will retry
    automatically is not reported until its last attempt fails.
    """

    @dg.run_failure_sensor(
        name="eams_operator_alerts",
        minimum_interval_seconds=interval_seconds or sensor_interval_seconds(),
        monitored_jobs=list(monitored_jobs),
        default_status=default_status,
        description="Emails EAMS_OPERATOR_EMAILS when an upload run fails (after its retries).",
    )
    def _alert(context: dg.RunFailureSensorContext, smtp: SmtpResource) -> dg.SkipReason | None:
        run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
        if run.tags.get(WILL_RETRY_TAG) == "true":
            return dg.SkipReason(f"run {run.run_id} will be retried; no alert yet")
        operators = operator_emails()
        if not operators:
            context.log.warning("EAMS_OPERATOR_EMAILS is not set: no operator alert sent")
            return dg.SkipReason("EAMS_OPERATOR_EMAILS is not set")
        upload_key = upload_key_of_run(run.tags)
        district = run.tags.get(DISTRICT_TAG)
        if district is None and upload_key:
            try:
                district = UploadRef.parse(upload_key).district
            except ValueError:
                district = None
        message = build_failure_email(
            operators=operators,
            sender=smtp.sender,
            district_code=district or "(unknown)",
            run_id=run.run_id,
            upload_key=upload_key,
            error_text=failure_text(context),
        )
        smtp.send(message)
        context.log.info(f"alerted {len(operators)} operator(s) about run {run.run_id}")
        return None

    return _alert


def failure_text(context: dg.RunFailureSensorContext) -> str:
    """What failed: step and error class with the first line of the message.

    Deliberately no traceback or exception detail (a database error's DETAIL can quote row
    values): the full error is in the run's logs in the Dagster UI.
    """
    lines = []
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if error is None:
            lines.append(f"step {event.step_key}: failed")
            continue
        while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError",):
            error = error.cause
        first = (error.message or "").strip().splitlines()[:1]
        text = first[0] if first else ""
        if len(text) > _MAX_ERROR_LINE:
            text = text[:_MAX_ERROR_LINE] + " [...]"
        head, sep, rest = text.partition(": ")
        if sep and head.split(".")[-1] == error.cls_name:  # "pkg.mod.Cls: message"
            text = rest
        text = f"{error.cls_name}: {text}"
        lines.append(f"step {event.step_key}: {text}")
    if not lines:
        message = (context.failure_event.message or "the run failed").strip().splitlines()
        lines.append(message[0][:_MAX_ERROR_LINE] if message else "the run failed")
    return "\n".join(lines)
