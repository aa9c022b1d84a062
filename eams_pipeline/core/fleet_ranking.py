"""The fleet at a glance: which districts need an operator, worst first. Pure (the clock and
every fact passed in); the `fleet_status` asset and `eams fleet status` show the same.

A district needs attention for each of these (most severe first):

==============  =========================================================================
failed          its last upload run failed for good (Dagster; not while a retry is due),
                or its last upload has had no outcome for ``stuck_after`` (the run died)
rejected        its last upload was rejected (a file-level error: nothing applied)
held            uploads held by the change guard wait for an operator's approval
stale           no applied upload for more than ``stale_nights`` of its expected nights
                (districts with ``expected_by`` only)
missing         nothing received in the 24 hours before its last ``expected_by`` (the
                missing-upload alert's rule, shown until a file arrives)
errors_rising   the errors/rows of its last accepted upload are at least ``rate_floor`` and
                more than ``rate_factor`` times the median of the ``rate_baseline`` before
                (at least two of them)
licenses_low    the Enterprise order's available licenses are under the district's
                ``low_licenses`` (master data) or, without it, under ``licenses_low_pct`` %
                of its size or under ``licenses_low_min`` (core.licenses' default)
==============  =========================================================================

Ranking: by the most severe state, then by more states, then by the oldest problem, then
by district code.
"""

from __future__ import annotations

import datetime as dt
import statistics
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from eams_pipeline.core.outcome import UploadStatus

DAY = dt.timedelta(days=1)


class FleetState(StrEnum):
    FAILED = "failed"
    REJECTED = "rejected"
    HELD = "held"
    STALE = "stale"
    MISSING = "missing"
    ERRORS_RISING = "errors_rising"
    LICENSES_LOW = "licenses_low"


SEVERITY = {state: i for i, state in enumerate(FleetState)}
OK = "ok"


@dataclass(frozen=True)
class FleetRules:
    stuck_after: dt.timedelta = dt.timedelta(hours=1)
    stale_nights: int = 2
    rate_floor: float = 0.01
    rate_factor: float = 2.0
    rate_baseline: int = 5
    licenses_low_pct: float = 5.0
    licenses_low_min: int = 1


@dataclass(frozen=True)
class LastUpload:
    key: str
    status: UploadStatus
    received_at: dt.datetime
    error_codes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FailedRun:
    """The district's last upload run, failed for good (read from Dagster)."""

    run_id: str
    failed_at: dt.datetime
    upload_key: str | None = None


@dataclass(frozen=True)
class DistrictFacts:
    """What the database says of one district (one row of db.fleet_facts.district_facts)."""

    code: str
    name: str
    timezone: str = "UTC"
    expected_by: dt.time | None = None
    created_at: dt.datetime | None = None
    last_upload: LastUpload | None = None
    last_received_at: dt.datetime | None = None  # the newest upload's time (any status)
    last_applied_at: dt.datetime | None = None  # received_at of the newest applied upload
    held: int = 0
    oldest_held_key: str | None = None
    oldest_held_at: dt.datetime | None = None
    oldest_held_rule: str | None = None
    # errors/rows of the newest accepted uploads with rows, newest first, and the newest's key
    error_rates: tuple[float, ...] = ()
    error_rate_key: str | None = None
    enterprise_order: str | None = None
    licenses: int | None = None  # the Enterprise order's size
    licenses_used: int | None = None
    low_licenses: int | None = None  # the district's master data (None: the rules' default)


@dataclass(frozen=True)
class Attention:
    state: FleetState
    detail: str
    key: str | None  # an upload key, a run id or an order number: what to look up
    since: dt.datetime | None = None  # when the problem began, if known
    run_id: str | None = None  # a failed run (the UI links it)


@dataclass(frozen=True)
class DistrictStatus:
    code: str
    name: str
    attention: tuple[Attention, ...]  # most severe first

    @property
    def state(self) -> str:
        return self.attention[0].state if self.attention else OK

    def as_dict(self) -> dict[str, object]:
        return {
            "district": self.code,
            "name": self.name,
            "state": str(self.state),
            "states": [str(a.state) for a in self.attention],
            "attention": [
                {
                    "state": str(a.state),
                    "detail": a.detail,
                    "key": a.key,
                    "since": a.since.isoformat() if a.since else None,
                    **({"run_id": a.run_id} if a.run_id else {}),
                }
                for a in self.attention
            ],
        }


@dataclass(frozen=True)
class FleetStatus:
    generated_at: dt.datetime
    districts: int
    ranked: tuple[DistrictStatus, ...]  # the districts needing attention, worst first
    counts: Mapping[str, int]  # per state: districts in it (a district may be in several); ok

    @property
    def needs_attention(self) -> int:
        return len(self.ranked)

    def in_state(self, *states: FleetState) -> list[DistrictStatus]:
        return [d for d in self.ranked if any(a.state in states for a in d.attention)]

    def as_dict(self, top: int | None = None) -> dict[str, object]:
        ranked = self.ranked if top is None else self.ranked[:top]
        return {
            "generated_at": self.generated_at.isoformat(),
            "districts": self.districts,
            "needs_attention": self.needs_attention,
            "counts": dict(self.counts),
            "ranked": [d.as_dict() for d in ranked],
        }


# -- expected nights --------------------------------------------------------------------------


def _due_on(day: dt.date, expected_by: dt.time, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    due = dt.datetime.combine(day, expected_by.replace(tzinfo=None), tzinfo=tz)
    return due.astimezone(dt.UTC)  # a local time that does not exist normalises through UTC


def last_due(now: dt.datetime, expected_by: dt.time, timezone: str) -> dt.datetime:
    """The latest ``expected_by`` (local time of ``timezone``) at or before ``now``."""
    tz = zoneinfo.ZoneInfo(timezone)
    today = now.astimezone(tz).date()
    due = _due_on(today, expected_by, tz)
    return due if due <= now else _due_on(today - DAY, expected_by, tz)


def dues_between(after: dt.datetime, now: dt.datetime, expected_by: dt.time, timezone: str) -> int:
    """How many ``expected_by`` times fall in ``(after, now]``."""
    if now <= after:
        return 0
    tz = zoneinfo.ZoneInfo(timezone)
    first = after.astimezone(tz).date()
    if _due_on(first, expected_by, tz) <= after:
        first += DAY
    last = now.astimezone(tz).date()
    if _due_on(last, expected_by, tz) > now:
        last -= DAY
    return max(0, (last - first).days + 1)


def nights_without_applied(facts: DistrictFacts, now: dt.datetime) -> int | None:
    """Expected nights with no applied upload since the last one (None: no expected_by).

    An upload received at ``t`` serves the nights whose ``expected_by`` is within 24 hours
    after it; the nights due after ``t + 24h`` had none. A district never applied counts
    from its creation."""
    if facts.expected_by is None:
        return None
    if facts.last_applied_at is not None:
        since = facts.last_applied_at + DAY
    elif facts.created_at is not None:
        since = facts.created_at
    else:
        return None
    return dues_between(since, now, facts.expected_by, facts.timezone)


# -- the states ---------------------------------------------------------------------------


def _when(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%MZ") if t else "never"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def district_attention(
    facts: DistrictFacts,
    now: dt.datetime,
    rules: FleetRules = FleetRules(),
    failed_run: FailedRun | None = None,
) -> tuple[Attention, ...]:
    """Every reason the district needs attention now, most severe first."""
    out: list[Attention] = []
    last = facts.last_upload
    if failed_run is not None:
        what = f" (upload {failed_run.upload_key})" if failed_run.upload_key else ""
        out.append(
            Attention(
                FleetState.FAILED,
                f"last upload run failed at {_when(failed_run.failed_at)}{what}",
                failed_run.upload_key or failed_run.run_id,
                failed_run.failed_at,
                run_id=failed_run.run_id,
            )
        )
    elif (
        last is not None
        and last.status == UploadStatus.RECEIVED
        and now - last.received_at >= rules.stuck_after
    ):
        out.append(
            Attention(
                FleetState.FAILED,
                f"no outcome since {_when(last.received_at)}: its run failed or is stuck",
                last.key,
                last.received_at,
            )
        )
    if last is not None and last.status == UploadStatus.REJECTED:
        codes = ", ".join(sorted(last.error_codes)) or "rejected"
        out.append(
            Attention(
                FleetState.REJECTED,
                f"last upload rejected ({codes}) at {_when(last.received_at)}",
                last.key,
                last.received_at,
            )
        )
    if facts.held:
        rule = f", {facts.oldest_held_rule}" if facts.oldest_held_rule else ""
        out.append(
            Attention(
                FleetState.HELD,
                f"{facts.held} held upload{'s' if facts.held > 1 else ''} awaiting approval, "
                f"oldest received {_when(facts.oldest_held_at)}{rule}",
                facts.oldest_held_key,
                facts.oldest_held_at,
            )
        )
    nights = nights_without_applied(facts, now)
    if nights is not None and nights > rules.stale_nights:
        out.append(
            Attention(
                FleetState.STALE,
                f"no applied upload for {nights} expected nights "
                f"(last applied upload received {_when(facts.last_applied_at)})",
                None,
                facts.last_applied_at,
            )
        )
    if facts.expected_by is not None:
        due = last_due(now, facts.expected_by, facts.timezone)
        if facts.last_received_at is None or facts.last_received_at < due - DAY:
            out.append(
                Attention(
                    FleetState.MISSING,
                    f"nothing received for {facts.expected_by:%H:%M} {facts.timezone} "
                    f"(due {_when(due)}); last received {_when(facts.last_received_at)}",
                    None,
                    due,
                )
            )
    rising = _errors_rising(facts, rules)
    if rising is not None:
        out.append(rising)
    low = _licenses_low(facts, rules)
    if low is not None:
        out.append(low)
    return tuple(sorted(out, key=lambda a: SEVERITY[a.state]))


def _errors_rising(facts: DistrictFacts, rules: FleetRules) -> Attention | None:
    if len(facts.error_rates) < 3:
        return None
    rate, before = facts.error_rates[0], facts.error_rates[1 : 1 + rules.rate_baseline]
    median = statistics.median(before)
    if rate < rules.rate_floor or rate <= rules.rate_factor * median:
        return None
    return Attention(
        FleetState.ERRORS_RISING,
        f"errors {_pct(rate)} of rows in the last accepted upload, "
        f"median {_pct(median)} of the {len(before)} before",
        facts.error_rate_key,
    )


def _licenses_low(facts: DistrictFacts, rules: FleetRules) -> Attention | None:
    if facts.licenses is None or facts.licenses_used is None:
        return None
    available = facts.licenses - facts.licenses_used
    if facts.low_licenses is not None:
        if available >= facts.low_licenses:
            return None
    elif (
        available >= rules.licenses_low_min
        and available * 100 >= rules.licenses_low_pct * facts.licenses
    ):
        return None
    share = f" ({100 * available / facts.licenses:.1f}%)" if facts.licenses else ""
    return Attention(
        FleetState.LICENSES_LOW,
        f"{available:,} of {facts.licenses:,} Enterprise licenses available{share}",
        facts.enterprise_order,
    )


def _rank_key(d: DistrictStatus) -> tuple:
    oldest = min((a.since for a in d.attention if a.since), default=None)
    return (
        SEVERITY[d.attention[0].state],
        -len(d.attention),
        oldest is None,
        oldest or dt.datetime.min.replace(tzinfo=dt.UTC),
        d.code,
    )


def fleet_status(
    districts: Iterable[DistrictFacts],
    now: dt.datetime,
    *,
    failed_runs: Mapping[str, FailedRun] | None = None,
    rules: FleetRules = FleetRules(),
) -> FleetStatus:
    """Every district's state, the ones needing attention ranked worst first."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    failed_runs = failed_runs or {}
    statuses: Sequence[DistrictStatus] = [
        DistrictStatus(f.code, f.name, district_attention(f, now, rules, failed_runs.get(f.code)))
        for f in districts
    ]
    counts = {str(s): 0 for s in FleetState} | {OK: 0}
    for d in statuses:
        for a in d.attention:
            counts[str(a.state)] += 1
        if not d.attention:
            counts[OK] += 1
    ranked = tuple(sorted((d for d in statuses if d.attention), key=_rank_key))
    return FleetStatus(generated_at=now, districts=len(statuses), ranked=ranked, counts=counts)


def markdown_table(status: FleetStatus, top: int, run_url: str = "/runs/{run_id}") -> str:
    """The ``top`` districts needing attention as a Markdown table (the asset's metadata); a
    failed run is linked (``run_url`` formatted with its id)."""
    if not status.ranked:
        return f"All {status.districts} districts are fine."
    lines = [
        "| # | district | state | detail | key |",
        "|---|---|---|---|---|",
    ]
    for i, d in enumerate(status.ranked[:top], 1):
        first = d.attention[0]
        detail = "; ".join(a.detail for a in d.attention)
        key = first.key or ""
        if first.run_id:
            key = f"[{key}]({run_url.format(run_id=first.run_id)})"
        elif key:
            key = f"`{key}`"
        states = ", ".join(str(a.state) for a in d.attention)
        lines.append(f"| {i} | {_cell(d.code)} | {states} | {_cell(detail)} | {key} |")
    if len(status.ranked) > top:
        lines.append(f"\n{len(status.ranked) - top} more need attention (`eams fleet status`).")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
