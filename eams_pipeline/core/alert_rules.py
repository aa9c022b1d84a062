"""District alerts: nothing arrived, or the wrong thing arrived. Pure decisions (no Dagster,
no I/O, the clock passed in); :mod:`eams_pipeline.services.alerting` sends the emails (from
the district sensor's tick) and records each alert in ``district_alerts`` (one row per
district, kind and subject) so it goes out once.

- **Missing upload**: a district with ``expected_by`` (local time, its ``timezone``) whose
  last upload was received more than 24 hours before today's ``expected_by`` is alerted
  once that day (subject: the local date), from ``expected_by`` until the end of that day.
  A ``students.csv`` waiting in incoming/ (settling, or waiting for ``process_at``) counts as
  received. Silent on the district's paused days (``pauses``, core.pauses), and the 24
  hours do not count paused time: the first day after a pause looks back to before it.
- **Stray files** (misnamed): a file in incoming/ that is neither ``students.csv`` nor an
  upload in progress (``*.filepart``), unchanged for the settle window as the sensor saw it,
  is reported in a digest: at most one email per district and local day (kind
  ``misnamed_digest``, subject: the local date), sent when a settled stray file has not
  been reported before (kind ``misnamed_file``, subject ``<escaped name>|<size>``), listing
  at most ``DIGEST_LIST`` files. The sensor tracks at most ``MAX_TRACKED`` stray files
  (in name order, keyed by a digest of the name): a junk-filled incoming/ costs one email a
  day at most and a bounded cursor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, replace

from eams_pipeline.core.names import PARTIAL_SUFFIX, UPLOAD_NAME
from eams_pipeline.core.pauses import Pause, pause_on, unpaused_window_start
from eams_pipeline.core.remote_files import RemoteFile, shown_name
from eams_pipeline.core.settle import Other

MISSING_UPLOAD = "missing_upload"
MISNAMED_FILE = "misnamed_file"
MISNAMED_DIGEST = "misnamed_digest"
WINDOW = dt.timedelta(hours=24)
MAX_TRACKED = 100  # stray files the sensor's cursor follows
DIGEST_LIST = 20  # stray files a digest names (the rest are counted)


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
    pauses: Sequence[Pause] = (),
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
    if now < due or pause_on(pauses, local.date()) is not None:
        return None
    since = unpaused_window_start(due, WINDOW, timezone=timezone, pauses=pauses)
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


def stray(files: Sequence[RemoteFile]) -> list[RemoteFile]:
    """The stray files of a listing: neither students.csv nor an upload in progress."""
    return sorted(
        (f for f in files if f.name != UPLOAD_NAME and not f.name.endswith(PARTIAL_SUFFIX)),
        key=lambda f: f.name,
    )


def other_key(name: str) -> str:
    """A stray file's key in the cursor: 16 hex digits of its name's BLAKE2b digest."""
    raw = name.encode("utf-8", "surrogateescape")
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def track_other_files(
    files: Sequence[RemoteFile], previous: Mapping[str, Other], now: dt.datetime
) -> dict[str, Other]:
    """The first ``MAX_TRACKED`` stray files (by name) and since when each has had its
    current size and time; a file reported as it is stays reported."""
    out = {}
    for f in stray(files)[:MAX_TRACKED]:
        key = other_key(f.name)
        seen = previous.get(key)
        same = seen is not None and (seen.size, seen.mtime) == (f.size, f.mtime)
        out[key] = seen if same else Other(size=f.size, mtime=f.mtime, since=now.timestamp())
    return out


def misnamed_subject(name: str, size: int) -> str:
    """How a reported stray file is recorded: its escaped name and its size."""
    return f"{shown_name(name)}|{size}"


def settled_stray(
    files: Sequence[RemoteFile], others: Mapping[str, Other], now: dt.datetime, settle: float
) -> list[RemoteFile]:
    """The tracked stray files unchanged for the settle window, by name."""
    out = []
    for f in stray(files):
        seen = others.get(other_key(f.name))
        if seen is not None and now.timestamp() - seen.since >= settle:
            out.append(f)
    return out


def unreported(files: Sequence[RemoteFile], others: Mapping[str, Other]) -> list[RemoteFile]:
    """Those of ``files`` no digest has reported as they are."""
    return [f for f in files if not others[other_key(f.name)].reported]


def mark_reported(others: Mapping[str, Other], files: Sequence[RemoteFile]) -> dict[str, Other]:
    keys = {other_key(f.name) for f in files}
    return {k: replace(v, reported=True) if k in keys else v for k, v in others.items()}


def local_day(now: dt.datetime, timezone: str) -> str:
    """The district's local date: a digest's subject."""
    return now.astimezone(zoneinfo.ZoneInfo(timezone)).date().isoformat()
