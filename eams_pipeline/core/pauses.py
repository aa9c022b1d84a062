"""Pauses: the date ranges in which a district sends no real uploads (summer, winter break,
a rollover week), from its master data `pauses: [{from: 2026-06-15, to: 2026-08-20}]`.
Pure: the clock (an upload's received time, the sensor's now) is passed in.

Dates are the district's own (its `timezone`), both ends inclusive: a pause to 2026-08-20
covers that whole local day. Pauses that follow each other without a free day between them
are one span (a rollover week right after the summer is one long pause).

Two rules of the change guard (held like any of its rules: status `held`, the rule in
`guard`, approve or discard):

    paused             an upload received on a paused day; takes precedence over every
                       other rule
    first_after_pause  the first upload received after a pause of LONG_PAUSE_DAYS or more
                       ended, as long as no upload was applied since that pause ended
                       (an approved hold counts as applied): the night a new school year's
                       export replaces last year's roster, whatever its figures

The missing-upload alert is silent on paused days, and its window (the 24 hours before
the due time in which a file must have arrived) does not count paused time: the first due
time after a pause looks back past the pause to the days before it.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

PAUSED = "paused"
FIRST_AFTER_PAUSE = "first_after_pause"
PAUSE_RULES = (PAUSED, FIRST_AFTER_PAUSE)
LONG_PAUSE_DAYS = 21  # a pause this long or longer: its first upload after it is reviewed


@dataclass(frozen=True, order=True)
class Pause:
    """Local dates, both inclusive."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError(f"a pause from {self.start} cannot end before it, on {self.end}")

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def __str__(self) -> str:
        return f"{self.start.isoformat()} to {self.end.isoformat()}"

    def covers(self, day: dt.date) -> bool:
        return self.start <= day <= self.end

    def as_dict(self) -> dict[str, str]:
        """As stored (districts.pauses) and shown: `from` and `to`, ISO dates."""
        return {"from": self.start.isoformat(), "to": self.end.isoformat()}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Pause:
        return cls(dt.date.fromisoformat(value["from"]), dt.date.fromisoformat(value["to"]))


def spans(pauses: Iterable[Pause]) -> tuple[Pause, ...]:
    """The pauses in date order, those that overlap or follow each other without a free
    day between them merged into one."""
    out: list[Pause] = []
    for p in sorted(pauses):
        if out and p.start <= out[-1].end + dt.timedelta(days=1):
            out[-1] = Pause(out[-1].start, max(out[-1].end, p.end))
        else:
            out.append(p)
    return tuple(out)


def overlaps(pauses: Sequence[Pause]) -> list[tuple[int, int]]:
    """(i, j) for each pause j that shares a day with an earlier-starting pause i (indexes
    into `pauses` as given): the master data refuses them."""
    order = sorted(range(len(pauses)), key=lambda k: pauses[k])
    found = []
    for a, i in enumerate(order):
        for j in order[a + 1 :]:
            if pauses[j].start > pauses[i].end:
                break
            found.append((i, j))
    return found


def local_date(moment: dt.datetime, timezone: str) -> dt.date:
    """The district's local date of an aware moment."""
    if moment.tzinfo is None:
        raise ValueError("the moment must be timezone-aware")
    return moment.astimezone(zoneinfo.ZoneInfo(timezone)).date()


def pause_on(pauses: Iterable[Pause], day: dt.date) -> Pause | None:
    """The pause span (merged, see `spans`) that covers this local date, if any."""
    return next((p for p in spans(pauses) if p.covers(day)), None)


def last_long_pause(pauses: Iterable[Pause], day: dt.date) -> Pause | None:
    """The latest pause span of LONG_PAUSE_DAYS days or more that ended before `day`."""
    ended = [p for p in spans(pauses) if p.end < day and p.days >= LONG_PAUSE_DAYS]
    return ended[-1] if ended else None


@dataclass(frozen=True)
class PauseTrip:
    """A pause rule's verdict (kept with the upload like core.guard.GuardTrip)."""

    rule: str  # PAUSED or FIRST_AFTER_PAUSE
    message: str
    pause_from: str  # ISO dates of the pause span
    pause_to: str
    days: int  # the pause span's length
    received_on: str  # the upload's local date (ISO), in `timezone`
    timezone: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "message": self.message,
            "pause_from": self.pause_from,
            "pause_to": self.pause_to,
            "days": self.days,
            "received_on": self.received_on,
            "timezone": self.timezone,
        }


def pause_trip(
    received_at: dt.datetime,
    *,
    timezone: str,
    pauses: Sequence[Pause],
    last_applied_at: dt.datetime | None,
) -> PauseTrip | None:
    """Does a pause hold this upload? `received_at`: when it arrived (aware);
    `last_applied_at`: when the district's newest applied upload arrived (None: none).
    `paused` when the upload's local date is in a pause; else `first_after_pause` when a
    pause of LONG_PAUSE_DAYS or more ended before that date and no applied upload arrived
    after its last day; else None."""
    if not pauses:
        return None
    day = local_date(received_at, timezone)

    def trip(rule: str, span: Pause, message: str) -> PauseTrip:
        return PauseTrip(
            rule,
            message,
            span.start.isoformat(),
            span.end.isoformat(),
            span.days,
            day.isoformat(),
            timezone,
        )

    span = pause_on(pauses, day)
    if span is not None:
        return trip(PAUSED, span, f"uploads are paused from {span}")
    span = last_long_pause(pauses, day)
    if span is None:
        return None
    if last_applied_at is not None and local_date(last_applied_at, timezone) > span.end:
        return None  # an upload was applied since the pause ended
    return trip(
        FIRST_AFTER_PAUSE,
        span,
        f"first upload after a pause of {span.days} days ({span}); please review",
    )


def _midnight(day: dt.date, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    """The start of a local day, as an aware moment (normalised through UTC)."""
    return dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC).astimezone(tz)


def unpaused_window_start(
    due: dt.datetime, window: dt.timedelta, *, timezone: str, pauses: Sequence[Pause]
) -> dt.datetime:
    """The moment `window` of time that is not paused ends at `due`: paused days do not
    count. Without pauses, `due - window`."""
    tz = zoneinfo.ZoneInfo(timezone)
    cursor, remaining = due, window
    for span in reversed(spans(pauses)):
        start, after = _midnight(span.start, tz), _midnight(span.end + dt.timedelta(days=1), tz)
        if start >= cursor:
            continue  # after the cursor: does not matter
        if after < cursor:
            free = cursor - after
            if free >= remaining:
                return cursor - remaining
            remaining -= free
        cursor = start  # jump over the paused days
    return cursor - remaining


def parse_stored(value: Any) -> tuple[Pause, ...]:
    """districts.pauses (a JSON list of {from, to}) as pauses, in date order."""
    return tuple(sorted(Pause.from_dict(v) for v in value or ()))


def stored(pauses: Iterable[Pause]) -> list[dict[str, str]]:
    """The pauses as districts.pauses keeps them."""
    return [p.as_dict() for p in sorted(pauses)]
