"""What an upload came to: its status, its counts, its errors. One vocabulary for the
engine, the database (the CHECK constraints of `sql/`, tested equal), the CLI, Dagster and
the emails."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import pandas as pd

from eams_pipeline.core.reading import FileRejected


class UploadStatus(StrEnum):
    RECEIVED = "received"  # recorded, no outcome yet (a run is on it or crashed)
    PROCESSED = "processed"  # accepted, every row applied
    PARTIALLY_PROCESSED = "partially_processed"  # accepted, the valid rows applied
    REJECTED = "rejected"  # a file-level error: nothing applied
    SUPERSEDED = "superseded"  # older than an upload already applied: not applied
    HELD = "held"  # the change guard tripped: nothing applied until approved
    DISCARDED = "discarded"  # a held upload an operator discarded: nothing applied
    REVERTED = "reverted"  # applied, then put back by `eams uploads revert`
    CHECKED = "checked"  # a check drop (check/students.csv): a dry run, nothing applied


class UploadKind(StrEnum):
    """What a district's students.csv asks for: applied (``incoming/``) or only checked
    (``check/``: the engine's dry run, a report and an email, nothing applied)."""

    UPLOAD = "upload"
    CHECK = "check"


# the statuses whose outcome is final: processing the upload again changes nothing
FINAL_STATUSES = frozenset(
    {UploadStatus.PROCESSED, UploadStatus.PARTIALLY_PROCESSED, UploadStatus.REJECTED}
)
# the statuses a plain re-run leaves alone: it returns what was recorded. A held upload is
# applied only by an explicit approval (services.review), never by running it again.
SETTLED_STATUSES = FINAL_STATUSES | {
    UploadStatus.HELD,
    UploadStatus.DISCARDED,
    UploadStatus.REVERTED,
    UploadStatus.CHECKED,
}
# the statuses whose email also goes to the district's failure contacts
FAILURE_STATUSES = frozenset({UploadStatus.REJECTED, UploadStatus.HELD})
# the statuses of an upload whose rows were applied to the students
APPLIED_STATUSES = frozenset({UploadStatus.PROCESSED, UploadStatus.PARTIALLY_PROCESSED})

# what each data row came to: every row is exactly one of these
OUTCOMES = ("added", "activated", "deactivated", "updated", "unchanged", "errors")
# the counts of an upload, in the order they are shown everywhere; rows = sum of OUTCOMES
COUNT_KEYS = ("rows", *OUTCOMES)
# the outcomes that write a student
CHANGES = ("added", "activated", "deactivated", "updated")


@dataclass
class UploadResult:
    """What happened to an upload: the summary of SPEC §8 plus the errors to publish."""

    upload_id: int | None
    district: str
    status: UploadStatus
    counts: dict[str, int]
    error_codes: dict[str, int]
    errors: pd.DataFrame
    file_error: FileRejected | None = None
    already_applied: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    # of each step's seconds, the CPU seconds of the thread that ran it (the rest is waiting:
    # the apply's rest is PostgreSQL's time)
    cpu_timings: dict[str, float] = field(default_factory=dict)
    # argon2id hashes computed by this call (before the apply and inline); hashes the apply
    # used that were computed before the lock (by this call, or by an earlier run that
    # stopped, from the durable cache)
    hashed_passwords: int = 0
    cached_hashes: int = 0
    # stored password fingerprints moved from a previous server secret to the current one
    rekeyed_passwords: int = 0
    hash_rate_per_s: float = 0.0
    # full-roster mode: active students absent from the file, deactivated (not in `rows`)
    deactivated_missing: int = 0
    # the change guard: the rule(s) that tripped with their figures (core.guard.trip_record)
    guard_trip: dict[str, object] | None = None
    guard_figures: dict[str, object] | None = None
    # held uploads of the district that this one superseded (their keys)
    superseded_held: list[str] = field(default_factory=list)
    # status superseded: the key of the later upload of the district already applied
    superseded_by: str | None = None

    @property
    def has_errors(self) -> bool:
        """Is there anything to put in an error file?"""
        return self.counts["errors"] > 0 or self.file_error is not None

    def summary(self, error_file: str | None) -> dict[str, object]:
        """The JSON summary of `eams process` (SPEC §8), also the email's figures."""
        return {
            "upload_id": self.upload_id,
            "district": self.district,
            "status": str(self.status),
            **{k: int(self.counts[k]) for k in COUNT_KEYS},
            "error_codes": self.error_codes,
            "error_file": error_file if self.has_errors else None,
            "deactivated_missing": int(self.deactivated_missing),
            "guard": self.guard_trip,
        }


def status_of(counts: dict[str, int]) -> UploadStatus:
    """An accepted file's status: partially processed when any row has an error."""
    return UploadStatus.PARTIALLY_PROCESSED if counts["errors"] else UploadStatus.PROCESSED
