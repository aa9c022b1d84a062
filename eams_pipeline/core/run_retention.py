"""Retention of Dagster runs and their events: which runs may go, as a pure decision.

At 2,000 districts a year is ~730,000 upload runs and tens of millions of event-log rows.
A finished run created before the cutoff (``EAMS_RUN_RETENTION_DAYS``) is deleted with its
events, except:

- a run of an upload that still needs an operator or a run: ``held`` (or superseded while
  held, still approvable) or ``received`` (no outcome: a run crashed on it) in the MY
  Access ``uploads`` table, the source of truth. A run names its upload by the run tag
  ``eams/upload_key``, or by ``dagster/partition`` for the runs made while uploads were
  Dagster partitions (a value that is no upload key simply matches no upload);
- the newest run of each district (run tag ``eams/district``), so that every district keeps
  the run, logs and materializations of its last upload however long it has been quiet;
  runs without a district (fleet status, retention, revert) keep the newest run of each job;
- a run that has not finished (queued, started, cancelling).

The adapter gathers these facts for a batch of candidates (one query per fact, set-based)
and deletes what :func:`decide` returns.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from eams_pipeline.core.outcome import UploadStatus

# statuses of uploads whose runs are never deleted (core.upload_retention keeps their files too)
KEEP_UPLOAD_STATUSES = frozenset({UploadStatus.RECEIVED, UploadStatus.HELD})

# why a candidate run was kept
RECENT = "recent"
UNFINISHED = "unfinished"
UPLOAD_PENDING = "upload_held_or_unfinished"
LAST_OF_DISTRICT = "last_run_of_district"
LAST_OF_JOB = "last_run_of_job"


@dataclass(frozen=True)
class RunFacts:
    """What retention needs to know of one run."""

    run_id: str
    created_at: dt.datetime
    finished: bool  # success, failure or canceled
    job_name: str
    district: str | None  # run tag eams/district
    upload_keys: tuple[str, ...] = ()  # run tags eams/upload_key and dagster/partition

    @property
    def group(self) -> tuple[str, str]:
        """Whose newest run is kept: the district's, or (no district) the job's."""
        if self.district:
            return ("district", self.district)
        return ("job", self.job_name)


@dataclass
class Decision:
    delete: list[str] = field(default_factory=list)
    kept: Counter[str] = field(default_factory=Counter)  # reason -> runs kept


def decide(
    runs: Iterable[RunFacts],
    *,
    cutoff: dt.datetime,
    pending_upload_keys: Container[str],
    newest_run_of: Mapping[tuple[str, str], str],
) -> Decision:
    """The runs to delete among ``runs``.

    ``pending_upload_keys``: the upload keys among the runs' whose status is held (or
    approvable) or received; ``newest_run_of``: each group's (see :attr:`RunFacts.group`)
    newest run id in the whole instance, not just among ``runs``. A group missing from it is
    kept whole (never delete what could be the last run when the lookup said nothing).
    """
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    out = Decision()
    for run in runs:
        if run.created_at >= cutoff:
            out.kept[RECENT] += 1
        elif not run.finished:
            out.kept[UNFINISHED] += 1
        elif any(k in pending_upload_keys for k in run.upload_keys):
            out.kept[UPLOAD_PENDING] += 1
        elif newest_run_of.get(run.group, run.run_id) == run.run_id:
            out.kept[LAST_OF_DISTRICT if run.district else LAST_OF_JOB] += 1
        else:
            out.delete.append(run.run_id)
    return out


def cutoff_for(now: dt.datetime, days: int) -> dt.datetime:
    """Runs created before this are old enough to go."""
    if days < 1:
        raise ValueError(f"run retention must be at least 1 day, got {days}")
    return now - dt.timedelta(days=days)
