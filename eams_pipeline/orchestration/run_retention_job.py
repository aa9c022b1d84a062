"""Retention of Dagster runs and their events (decisions in
:mod:`eams_pipeline.core.run_retention`; this module pages, asks and deletes).

    enforce_run_retention  pages through the finished runs created before the cutoff, oldest
                           first, in batches; per batch one query of the MY Access uploads
                           (held or unfinished), the newest run of each district or job met
                           (looked up once per job run), then ``instance.delete_run`` for
                           each run that may go (the run, its tags and its events, in short
                           statements of their own: no lock is held across a batch) and one
                           statement for the batch's asset check executions
    run_retention_job      op job ``delete_old_runs``; op config ``max_runs`` (0: no cap) and
                           ``dry_run``; metadata: deleted, kept by reason, batches, cutoff
    run_retention_schedule daily (EAMS_RUN_RETENTION_CRON, default 05:00 UTC)

Resumable: a job stopped half-way (or capped by ``max_runs``) has deleted the oldest runs;
the next one starts again from the oldest left.
"""

import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dagster as dg
import psycopg
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from pydantic import Field

from eams_pipeline import config as eams_config
from eams_pipeline.core.outcome import UploadKind
from eams_pipeline.core.run_retention import (
    Decision,
    RunFacts,
    cutoff_for,
    decide,
)
from eams_pipeline.db.dagster_storage import delete_check_executions
from eams_pipeline.db.run_retention_queries import pending_upload_keys
from eams_pipeline.db.upload_requests import delete_handled_requests
from eams_pipeline.orchestration.check_job import KIND_TAG
from eams_pipeline.orchestration.partitions import DISTRICT_TAG, upload_key_of_run
from eams_pipeline.orchestration.resources import DatabaseResource

RUN_RETENTION_JOB_NAME = "run_retention_job"
# how many of a district's newest runs are read to find its newest upload run among checks
CHECK_LOOKAHEAD = 20
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run_facts(record: dg.RunRecord) -> RunFacts:
    run = record.dagster_run
    tags = run.tags
    # the run's upload: its eams/upload_key tag, or (runs made while uploads were dynamic
    # partitions) its partition key when that is an upload key
    key = upload_key_of_run(tags)
    keys = (key,) if key else ()
    return RunFacts(
        run_id=run.run_id,
        created_at=record.create_timestamp,
        finished=run.status in FINISHED_STATUSES,
        job_name=run.job_name,
        district=tags.get(DISTRICT_TAG) or None,
        upload_keys=keys,
    )


class NewestRuns:
    """The newest upload run of each district (tag eams/district; not a check drop's run) or
    job, asked of the instance once per group and remembered for the job run (a run created
    meanwhile is newer than every candidate anyway)."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._instance = instance
        self._known: dict[tuple[str, str], str] = {}
        self.lookups = 0

    def of(self, groups: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        for group in groups:
            if group in self._known:
                continue
            kind, name = group
            if kind == "district":
                newest = self._newest_upload_run(name)
            else:
                ids = self._instance.get_run_ids(filters=dg.RunsFilter(job_name=name), limit=1)
                newest = ids[0] if ids else None
            self.lookups += 1
            if newest is not None:
                self._known[group] = newest
        return self._known

    def _newest_upload_run(self, district: str) -> str | None:
        """The district's newest run that is not a check drop's (a check is no upload: the
        district keeps its last upload's run); None when the newest CHECK_LOOKAHEAD runs
        are all checks (the district's runs are then all kept this time)."""
        runs = self._instance.get_runs(
            filters=dg.RunsFilter(tags={DISTRICT_TAG: district}), limit=CHECK_LOOKAHEAD
        )
        return next((r.run_id for r in runs if r.tags.get(KIND_TAG) != UploadKind.CHECK), None)


@dataclass
class RunRetentionReport:
    cutoff: dt.datetime
    scanned: int = 0
    deleted: int = 0
    check_executions_deleted: int = 0
    batches: int = 0
    newest_run_lookups: int = 0
    complete: bool = False  # every old run was looked at (not stopped by max_runs)
    seconds: float = 0.0
    kept: dict[str, int] = field(default_factory=dict)
    deleted_run_ids: list[str] = field(default_factory=list)  # up to the first 100

    def metadata(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "scanned": self.scanned,
            "deleted": self.deleted,
            "check_executions_deleted": self.check_executions_deleted,
            "batches": self.batches,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
            "kept": dg.MetadataValue.json(self.kept),
        }


def enforce_run_retention(
    instance: dg.DagsterInstance,
    conn: psycopg.Connection,
    *,
    now: dt.datetime,
    days: int,
    batch_size: int,
    max_runs: int = 0,
    dry_run: bool = False,
    log: Callable[[str], None] = lambda _m: None,
) -> RunRetentionReport:
    """Delete the finished runs created before ``now - days`` that :func:`decide` lets go,
    ``batch_size`` at a time, oldest first; stop after ``max_runs`` deleted (0: no cap)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    started = time.monotonic()
    report = RunRetentionReport(cutoff=cutoff_for(now, days))
    newest = NewestRuns(instance)
    kept: dict[str, int] = {}
    cursor: str | None = None  # the last run looked at that still exists
    while True:
        limit = batch_size
        if max_runs:
            limit = min(limit, max_runs - report.deleted)
            if limit <= 0:
                break
        records = instance.get_run_records(
            filters=dg.RunsFilter(created_before=report.cutoff, statuses=FINISHED_STATUSES),
            limit=limit,
            ascending=True,
            cursor=cursor,
        )
        if not records:
            report.complete = True
            break
        facts = [run_facts(r) for r in records]
        pending = pending_upload_keys(conn, {k for f in facts for k in f.upload_keys})
        conn.rollback()  # a read: hold no snapshot while deleting
        decision: Decision = decide(
            facts,
            cutoff=report.cutoff,
            pending_upload_keys=pending,
            newest_run_of=newest.of(dict.fromkeys(f.group for f in facts)),
        )
        if not dry_run:
            for run_id in decision.delete:
                instance.delete_run(run_id)
            report.check_executions_deleted += delete_check_executions(instance, decision.delete)
        report.batches += 1
        report.scanned += len(facts)
        report.deleted += len(decision.delete)
        report.deleted_run_ids.extend(decision.delete[: 100 - len(report.deleted_run_ids)])
        for reason, n in decision.kept.items():
            kept[reason] = kept.get(reason, 0) + n
        # page on after the batch's last run that is still there: a deleted run cannot be
        # a cursor (Dagster pages by the cursor run's row id)
        gone = set() if dry_run else set(decision.delete)
        for f in facts:
            if f.run_id not in gone:
                cursor = f.run_id
        log(
            f"batch {report.batches}: {len(facts)} old runs, {len(decision.delete)} "
            f"{'would be ' if dry_run else ''}deleted, kept {dict(decision.kept)}"
        )
        if len(records) < limit:  # the last page
            report.complete = True
            break
    report.kept = kept
    report.newest_run_lookups = newest.lookups
    report.seconds = time.monotonic() - started
    return report


class RunRetentionConfig(dg.Config):
    max_runs: int = Field(
        default=0,
        description="Delete at most this many runs in this job run (0: all that may go); "
        "the next run goes on with the oldest left.",
    )
    dry_run: bool = Field(default=False, description="Count what would go; delete nothing.")


def build_run_retention_job(clock: Clock = _utcnow) -> dg.JobDefinition:
    @dg.op(
        name="delete_old_runs",
        description=(
            "Deletes finished runs older than EAMS_RUN_RETENTION_DAYS with their events, in "
            "batches of EAMS_RUN_RETENTION_BATCH, never a run of a held or unfinished upload "
            "nor the newest run of a district (or of a job without districts); then the "
            "upload requests as old whose upload has an outcome."
        ),
    )
    def delete_old_runs(
        context: dg.OpExecutionContext, config: RunRetentionConfig, db: DatabaseResource
    ) -> dg.Output[int]:
        with db.connect() as conn:
            report = enforce_run_retention(
                context.instance,
                conn,
                now=clock(),
                days=eams_config.run_retention_days(),
                batch_size=eams_config.run_retention_batch(),
                max_runs=config.max_runs,
                dry_run=config.dry_run,
                log=context.log.info,
            )
            with conn.transaction():
                requests = delete_handled_requests(
                    conn, report.cutoff, dry_run=config.dry_run
                )
        context.log.info(
            f"run retention: {report.deleted} runs {'would go' if config.dry_run else 'deleted'}"
            f" of {report.scanned} older than {report.cutoff:%Y-%m-%d %H:%MZ}, kept {report.kept}"
        )
        return dg.Output(
            report.deleted,
            metadata={
                **report.metadata(),
                "upload_requests_deleted": requests,
                "days": eams_config.run_retention_days(),
                "dry_run": config.dry_run,
            },
        )

    @dg.job(
        name=RUN_RETENTION_JOB_NAME,
        description="Daily retention of Dagster runs and their event logs.",
        executor_def=dg.in_process_executor,
    )
    def run_retention_job() -> None:
        delete_old_runs()

    return run_retention_job


def build_run_retention_schedule(job: dg.JobDefinition) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="run_retention_daily",
        job=job,
        cron_schedule=eams_config.run_retention_cron(),
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs run_retention_job daily (EAMS_RUN_RETENTION_CRON).",
    )
