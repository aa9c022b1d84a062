"""One screen for the fleet: the ``fleet_status`` asset (refreshed by a schedule, every 15
minutes by default) ranks the districts that need attention (core.fleet_ranking), with counts per
state as numbers the UI plots over time, and asset checks that put the fleet's health on
the asset graph. ``eams fleet status`` shows the same ranking.

    fleet_status            metadata: districts, needs_attention, one count per state, the
                            top districts as a Markdown table (a failed run is linked), the
                            ranking as JSON
    checks                  no_failed_uploads (error), no_stale_districts (error),
                            no_long_held_uploads (warn), licenses_sufficient (warn)
    fleet_status_job        the asset alone
    fleet_status_schedule   EAMS_FLEET_STATUS_CRON (default every 15 minutes)
"""

import datetime as dt
from collections.abc import Callable

import dagster as dg
import psycopg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from dagster._core.storage.tags import WILL_RETRY_TAG

from eams_pipeline import config as eams_config
from eams_pipeline.core.fleet_ranking import (
    DistrictStatus,
    FailedRun,
    FleetState,
    FleetStatus,
    fleet_status,
    markdown_table,
)
from eams_pipeline.db.fleet_facts import district_facts
from eams_pipeline.orchestration.jobs import UPLOAD_JOB_NAME
from eams_pipeline.orchestration.partitions import DISTRICT_TAG, upload_key_of_run
from eams_pipeline.orchestration.resources import DatabaseResource

FLEET_GROUP = "eams_fleet"
FLEET_JOB_NAME = "fleet_status_job"
TOP = 50  # districts in the Markdown table
JSON_TOP = 500  # districts in the JSON ranking
CHECK_LIST = 20  # districts named in a check's metadata
FAILED_RUN_LOOKBACK = dt.timedelta(days=7)
HELD_TOO_LONG = dt.timedelta(days=1)
Clock = Callable[[], dt.datetime]

NO_FAILED_UPLOADS = "no_failed_uploads"
NO_STALE_DISTRICTS = "no_stale_districts"
NO_LONG_HELD_UPLOADS = "no_long_held_uploads"
LICENSES_SUFFICIENT = "licenses_sufficient"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def failed_upload_runs(
    instance: dg.DagsterInstance, now: dt.datetime, lookback: dt.timedelta = FAILED_RUN_LOOKBACK
) -> dict[str, FailedRun]:
    """District code -> its last upload run, when that run failed for good (no retry due)
    within ``lookback``. Two queries: the recent failed runs, then the runs of their
    districts since the first of them (a later run, retry or not, replaces a failure)."""
    failed = [
        r
        for r in instance.get_run_records(
            dg.RunsFilter(
                job_name=UPLOAD_JOB_NAME,
                statuses=[dg.DagsterRunStatus.FAILURE],
                created_after=now - lookback,
            )
        )
        if r.dagster_run.tags.get(DISTRICT_TAG)
    ]
    if not failed:
        return {}
    districts = sorted({r.dagster_run.tags[DISTRICT_TAG] for r in failed})
    since = min(r.create_timestamp for r in failed) - dt.timedelta(seconds=1)
    newest: dict[str, dg.RunRecord] = {}
    for r in instance.get_run_records(
        dg.RunsFilter(
            job_name=UPLOAD_JOB_NAME, tags={DISTRICT_TAG: districts}, created_after=since
        ),
        ascending=True,
    ):
        newest[r.dagster_run.tags[DISTRICT_TAG]] = r
    out = {}
    for code, r in newest.items():
        run = r.dagster_run
        if run.status != dg.DagsterRunStatus.FAILURE or run.tags.get(WILL_RETRY_TAG) == "true":
            continue
        out[code] = FailedRun(
            run_id=run.run_id,
            failed_at=r.update_timestamp,
            upload_key=upload_key_of_run(run.tags),
        )
    return out


def read_fleet_status(
    conn: psycopg.Connection, now: dt.datetime, instance: dg.DagsterInstance | None
) -> FleetStatus:
    """The fleet's status now: the database's facts, and the failed runs when an instance
    is given."""
    facts = district_facts(conn)
    conn.rollback()
    failed = failed_upload_runs(instance, now) if instance is not None else {}
    return fleet_status(facts, now, failed_runs=failed)


def _check(
    name: str,
    status: FleetStatus,
    states: list[FleetState],
    severity: dg.AssetCheckSeverity,
    what: str,
    only: Callable[[DistrictStatus], bool] = lambda _d: True,
) -> dg.AssetCheckResult:
    districts = [d for d in status.in_state(*states) if only(d)]
    details = {
        d.code: "; ".join(a.detail for a in d.attention if a.state in states)
        for d in districts[:CHECK_LIST]
    }
    return dg.AssetCheckResult(
        check_name=name,
        passed=not districts,
        severity=severity,
        description=f"{len(districts)} district(s) {what}" if districts else None,
        metadata={
            "districts": len(districts),
            "first": dg.MetadataValue.json(details),
        },
    )


FLEET_CHECKS = [
    dg.AssetCheckSpec(
        NO_FAILED_UPLOADS,
        asset="fleet_status",
        description="No district whose last upload run failed or whose last upload was rejected.",
    ),
    dg.AssetCheckSpec(
        NO_STALE_DISTRICTS,
        asset="fleet_status",
        description="No district without an applied upload for more than two of its expected "
        "nights (districts with expected_by).",
    ),
    dg.AssetCheckSpec(
        NO_LONG_HELD_UPLOADS,
        asset="fleet_status",
        description="No upload held by the change guard for more than a day.",
    ),
    dg.AssetCheckSpec(
        LICENSES_SUFFICIENT,
        asset="fleet_status",
        description=(
            "Every Enterprise order has its district's low_licenses available (default: at "
            "least 1 license and 5% of its size)."
        ),
    ),
]


def fleet_checks(status: FleetStatus, now: dt.datetime) -> list[dg.AssetCheckResult]:
    def held_long(d: DistrictStatus) -> bool:
        return any(
            a.state == FleetState.HELD and a.since is not None and now - a.since > HELD_TOO_LONG
            for a in d.attention
        )

    error, warn = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
    return [
        _check(
            NO_FAILED_UPLOADS,
            status,
            [FleetState.FAILED, FleetState.REJECTED],
            error,
            "with a failed or rejected last upload",
        ),
        _check(
            NO_STALE_DISTRICTS,
            status,
            [FleetState.STALE],
            error,
            "without an applied upload for more than two expected nights",
        ),
        _check(
            NO_LONG_HELD_UPLOADS,
            status,
            [FleetState.HELD],
            warn,
            "with an upload held for more than a day",
            only=held_long,
        ),
        _check(LICENSES_SUFFICIENT, status, [FleetState.LICENSES_LOW], warn, "low on licenses"),
    ]


def fleet_metadata(status: FleetStatus) -> dict[str, object]:
    return {
        "districts": dg.MetadataValue.int(status.districts),
        "needs_attention": dg.MetadataValue.int(status.needs_attention),
        **{state: dg.MetadataValue.int(n) for state, n in status.counts.items()},
        "top": dg.MetadataValue.md(markdown_table(status, TOP)),
        "ranking": dg.MetadataValue.json(status.as_dict(JSON_TOP)["ranked"]),
        "generated_at": dg.MetadataValue.timestamp(status.generated_at),
    }


def build_fleet_status_asset(clock: Clock = _utcnow) -> dg.AssetsDefinition:
    @dg.asset(
        name="fleet_status",
        group_name=FLEET_GROUP,
        check_specs=FLEET_CHECKS,
        description=(
            "The districts that need attention, worst first: last upload failed or rejected, "
            "held, stale, missing past expected_by, error rate rising, licenses low "
            "(same as `eams fleet status`)."
        ),
    )
    def fleet_status_asset(
        context: dg.AssetExecutionContext, db: DatabaseResource
    ) -> dg.MaterializeResult:
        now = clock()
        with db.connect() as conn:
            status = read_fleet_status(conn, now, context.instance)
        context.log.info(
            f"{status.needs_attention} of {status.districts} districts need attention: "
            + ", ".join(f"{k} {v}" for k, v in status.counts.items() if v)
        )
        return dg.MaterializeResult(
            metadata=fleet_metadata(status), check_results=fleet_checks(status, now)
        )

    return fleet_status_asset


def build_fleet_status_job() -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        FLEET_JOB_NAME,
        selection=dg.AssetSelection.groups(FLEET_GROUP),
        executor_def=dg.in_process_executor,
        description="Refresh fleet_status and its checks.",
    )


def build_fleet_status_schedule(
    job: UnresolvedAssetJobDefinition,
) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="fleet_status_schedule",
        job=job,
        cron_schedule=eams_config.fleet_status_cron(),
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Refreshes fleet_status (EAMS_FLEET_STATUS_CRON).",
    )
