"""District alerts: nothing arrived, or the wrong thing arrived. Pure decisions (no Dagster,
no I/O, the clock passed in); the district sensor sends the emails and records each alert
in ``district_alerts`` (one row per district, kind and subject) so it goes out once.

- **Missing upload**: a district with ``expected_by`` (local time, its ``timezone``) whose
  last upload was received more than 24 hours before today's ``expected_by`` is alerted
  once that day (subject: the local date), from ``expected_by`` until the end of that day.
  A ``students.csv`` waiting in incoming/ (settling, or waiting for ``process_at``) counts as
  received.
- **Misnamed file**: a file in incoming/ that is neither ``students.csv`` nor an upload in
  progress (``*.filepart``), unchanged in size for the settle window as the sensor saw it,
  is alerted once per file name and size (subject: ``<name>|<size>``).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

from eams_pipeline.io.sftp import RemoteFile
from eams_pipeline.orchestration.settle import PARTIAL_SUFFIX, UPLOAD_NAME, Watched

MISSING_UPLOAD = "missing_upload"
MISNAMED_FILE = "misnamed_file"
WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True)
class MissingUpload:
    subject: str  # the district's local date, e.g. 2026-01-14
    due: dt.datetime  # today's expected_by, aware
    since: dt.datetime  # the start of the 24 hours: nothing received since then
    last_received: dt.datetime | None
    already_alerted: bool = False  # sent earlier today: shown in the tick, not sent again


def missing_upload(
    now: dt.datetime,
    *,
    expected_by: dt.time | None,
    timezone: str,
    last_received: dt.datetime | None,
    file_waiting: bool,
    alerted: Container[str] = (),
) -> MissingUpload | None:
    """The missing-upload alert to send now, if any (see the module docstring)."""
    if expected_by is None or file_waiting:
        return None
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    tz = zoneinfo.ZoneInfo(timezone)
    local = now.astimezone(tz)
    due = dt.datetime.combine(local.date(), expected_by.replace(tzinfo=None), tzinfo=tz)
    # a local time that does not exist (clocks jump forward) normalises through UTC
    due = due.astimezone(dt.UTC).astimezone(tz)
    if now < due:
        return None
    since = due - WINDOW
    if last_received is not None and last_received >= since:
        return None
    subject = local.date().isoformat()
    return MissingUpload(
        subject=subject,
        due=due,
        since=since,
        last_received=last_received,
        already_alerted=subject in alerted,
    )


def track_other_files(
    files: Sequence[RemoteFile], previous: Mapping[str, Watched], now: dt.datetime
) -> dict[str, Watched]:
    """The other files of incoming/ and since when each has had its current size."""
    out = {}
    for f in files:
        if f.name == UPLOAD_NAME or f.name.endswith(PARTIAL_SUFFIX):
            continue
        seen = previous.get(f.name)
        same = seen is not None and (seen.size, seen.mtime) == (f.size, f.mtime)
        out[f.name] = seen if same else Watched(size=f.size, mtime=f.mtime, since=now.timestamp())
    return out


def misnamed_subject(name: str, size: int) -> str:
    return f"{name}|{size}"


def misnamed_files(
    others: Mapping[str, Watched],
    now: dt.datetime,
    settle_seconds: float,
    alerted: Container[str] = (),
) -> list[tuple[str, int]]:
    """(name, size) of the other files settled for the window and not yet alerted."""
    return [
        (name, w.size)
        for name, w in sorted(others.items())
        if now.timestamp() - w.since >= settle_seconds
        and misnamed_subject(name, w.size) not in alerted
    ]
