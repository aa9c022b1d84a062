"""Reprocessing historical uploads: which uploads an operator's request selects, recorded
for the orchestration to run again, one run each (``reprocess_uploads`` in Dagster).

A request names districts and a range of days (the district's local dates, both ends
included; either end may be left open), or upload keys, or both (their union). It selects
the uploads that can run again: within the archive's retention (EAMS_ARCHIVE_RETENTION_DAYS),
kept in the encrypted archive or recorded with a final outcome (a run of those reads the
archive, or reports what was recorded). Oldest first: the uploads of a district run in the
order they were received, and the usual rules hold (an upload already applied is not applied
again; one older than an applied upload is superseded, not applied, unless ``allow_older``).

Named uploads that cannot run again (unknown, past retention, neither archived nor final)
refuse the whole request, naming them; uploads of a district and date range that cannot are
reported as skipped. Nothing is recorded for a refused request.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

from eams_pipeline.core.names import make_upload_key
from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.db import upload_requests as db_requests
from eams_pipeline.db.districts import District, list_districts
from eams_pipeline.io.archive import Archive

DEFAULT_MAX_UPLOADS = 1000
_KEY_STAMP = "%Y%m%dT%H%M%S%fZ"


class ReprocessRefused(ValueError):
    pass


@dataclass(frozen=True)
class Selection:
    districts: tuple[str, ...] = ()
    received_from: dt.date | None = None
    received_to: dt.date | None = None
    upload_keys: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        *,
        districts: Iterable[str] = (),
        received_from: str = "",
        received_to: str = "",
        upload_keys: Iterable[str] = (),
    ) -> Selection:
        """From the launchpad's text; a bad value is refused naming the field and the value."""
        codes = tuple(dict.fromkeys(c.strip() for c in districts if c.strip()))
        keys = tuple(dict.fromkeys(k.strip() for k in upload_keys if k.strip()))
        start, end = _date("received_from", received_from), _date("received_to", received_to)
        if not codes and not keys:
            raise ReprocessRefused(
                "nothing selected: give districts (and optionally received_from/received_to) "
                "or upload_keys"
            )
        if (start or end) and not codes:
            raise ReprocessRefused(
                "received_from/received_to select days of districts: give districts"
            )
        if start and end and start > end:
            raise ReprocessRefused(f"received_from {start} is after received_to {end}")
        for key in keys:
            if _parse_key(key) is None:
                raise ReprocessRefused(
                    f"upload_keys: {key!r} is not an upload key "
                    "(<district>-<YYYYMMDDTHHMMSSffffffZ>)"
                )
        return cls(codes, start, end, keys)


@dataclass(frozen=True)
class Candidate:
    district: str
    upload_key: str
    received_at: dt.datetime
    status: str | None  # None: archived but never recorded (its run died before the apply)
    archived: bool
    final: bool  # recorded with an outcome a re-run reports as it is


@dataclass
class ReprocessPlan:
    selected: list[Candidate] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (upload key, why)
    recorded: int = 0  # rows added to upload_requests


def _date(name: str, text: str) -> dt.date | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ReprocessRefused(f"{name}: {text!r} is not a date (YYYY-MM-DD)") from None


def _parse_key(key: str) -> tuple[str, dt.datetime] | None:
    """(district code, received at) of an upload key, None if it is not one."""
    district, sep, stamp = key.rpartition("-")
    if not sep or not district:
        return None
    try:
        received_at = dt.datetime.strptime(stamp, _KEY_STAMP).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return (district, received_at) if make_upload_key(district, received_at) == key else None


def select_uploads(
    conn: psycopg.Connection,
    archive: Archive,
    selection: Selection,
    *,
    now: dt.datetime,
    archive_days: int,
) -> ReprocessPlan:
    """The uploads the selection names that can run again (oldest first), and the skipped."""
    districts = {d.code: d for d in list_districts(conn)}
    named: dict[str, tuple[str, dt.datetime]] = {}
    for key in selection.upload_keys:
        parsed = _parse_key(key)
        if parsed is None:  # Selection.parse checks this; a Selection built otherwise
            raise ReprocessRefused(f"upload_keys: {key!r} is not an upload key")
        named[key] = parsed
    unknown = [c for c in selection.districts if c not in districts]
    unknown += sorted({code for code, _ in named.values() if code not in districts} - set(unknown))
    if unknown:
        raise ReprocessRefused(f"no such district: {', '.join(unknown)}")
    horizon = now - dt.timedelta(days=archive_days)
    since, until = _utc_window(selection, horizon)
    recorded = {
        r.upload_key: r
        for r in db_requests.recorded_uploads(
            conn,
            district_codes=selection.districts,
            upload_keys=selection.upload_keys,
            since=since,
            until=until,
        )
    }
    conn.rollback()  # end the read
    archived: dict[str, set[str]] = {}

    def candidate(key: str, code: str, received_at: dt.datetime) -> Candidate:
        if code not in archived:
            archived[code] = set(archive.keys(code))
        row = recorded.get(key)
        return Candidate(
            district=code,
            upload_key=key,
            received_at=received_at,
            status=row.status if row else None,
            archived=key in archived[code],
            final=row.final if row else False,
        )

    found: dict[str, Candidate] = {}
    for code in selection.districts:
        archived[code] = set(archive.keys(code))
        keys = archived[code] | {k for k, r in recorded.items() if r.district == code}
        for key in keys:
            parsed = _parse_key(key)
            if (
                parsed
                and parsed[0] == code
                and parsed[1] >= since
                and _in_days(parsed[1], districts[code], selection)
            ):
                found[key] = candidate(key, code, parsed[1])
    for key, (code, received_at) in named.items():
        found[key] = candidate(key, code, received_at)
    missing = [k for k in named if found[k].status is None and not found[k].archived]
    if missing:
        raise ReprocessRefused("not in the archive nor in the database: " + ", ".join(missing))
    plan = ReprocessPlan()
    refused = []
    for c in sorted(found.values(), key=lambda c: (c.received_at, c.upload_key)):
        why = _why_not(c, horizon, archive_days)
        if why is None:
            plan.selected.append(c)
        elif c.upload_key in named:
            refused.append(f"{c.upload_key} ({why})")
        else:
            plan.skipped.append((c.upload_key, why))
    if refused:
        raise ReprocessRefused("cannot be reprocessed: " + "; ".join(refused))
    return plan


def request_reprocessing(
    conn: psycopg.Connection,
    archive: Archive,
    selection: Selection,
    *,
    requested_by: str,
    allow_older: bool = False,
    now: dt.datetime,
    archive_days: int,
    max_uploads: int = DEFAULT_MAX_UPLOADS,
) -> ReprocessPlan:
    """Select the uploads and record them to run again (all, or none when refused)."""
    plan = select_uploads(conn, archive, selection, now=now, archive_days=archive_days)
    if len(plan.selected) > max_uploads:
        raise ReprocessRefused(
            f"the selection holds {len(plan.selected)} uploads, more than max_uploads="
            f"{max_uploads}: narrow it (districts, dates) or raise max_uploads"
        )
    with conn.transaction():
        plan.recorded = db_requests.record_reprocess_requests(
            conn,
            requested_by,
            [(c.district, c.upload_key) for c in plan.selected],
            allow_older=allow_older,
        )
    return plan


def _utc_window(
    selection: Selection, horizon: dt.datetime
) -> tuple[dt.datetime, dt.datetime | None]:
    """A UTC window holding every selected local day, whatever the district's time zone (a
    day wider on each side). With no first day: from the retention horizon (less a day, so
    that the uploads just past it are reported as skipped)."""
    margin = dt.timedelta(days=1)
    start = horizon
    if selection.received_from is not None:
        start = dt.datetime.combine(selection.received_from, dt.time(), tzinfo=dt.UTC)
    until = None
    if selection.received_to is not None:
        end = dt.datetime.combine(selection.received_to, dt.time(), tzinfo=dt.UTC)
        until = end + 2 * margin
    return start - margin, until


def _in_days(received_at: dt.datetime, district: District, selection: Selection) -> bool:
    """Is the upload's local date (the district's time zone) within the selected days?"""
    day = received_at.astimezone(zoneinfo.ZoneInfo(district.timezone)).date()
    if selection.received_from is not None and day < selection.received_from:
        return False
    return selection.received_to is None or day <= selection.received_to


def _why_not(c: Candidate, horizon: dt.datetime, archive_days: int) -> str | None:
    """Why the upload cannot run again, or None."""
    if c.received_at < horizon:
        return (
            f"received {c.received_at:%Y-%m-%d}, past the archive retention ({archive_days} days)"
        )
    if c.status == UploadStatus.CHECKED:
        return "a check drop: checked only, never applied"
    if not c.archived and not c.final:
        return "not archived and without a recorded outcome: nothing to run it from"
    return None
