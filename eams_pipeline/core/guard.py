"""The change guard: does an upload change so much of a district that a person should look
at it before it is applied? Pure: the plan's counts and the district's figures in, the
rule that tripped (with its figures) out.

Three rules, each a percentage limit (0 or None turns the rule off):

    max_deactivated_pct  students the upload deactivates (rows and, in full-roster mode,
                         the students absent from the file), as a share of the district's
                         active students before the upload
    max_updated_pct      rows counted `updated`, as a share of the district's students
                         before the upload
    max_row_drop_pct     how many fewer data rows the file has than the district's usual
                         file (the median row count of its last 5 applied uploads), as a
                         share of that usual size: a truncated full extract

A rule trips when its percentage is strictly greater than its limit (exactly at the limit
passes) **and** its count is at least `min_count` (default 25): the eAMS batch process sends
incremental files, and a small district's ordinary night (2 of its 2 students deactivated, a
5-row file after a 10-row one) is a large share of very little. A rule whose base is zero
cannot trip, and nothing is held before the district has an applied upload: its first
applied upload sets the baseline.

Two more rules come from the district's pauses (core.pauses: `paused`,
`first_after_pause`); they hold whatever the figures, and are kept in the same record.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eams_pipeline.core.pauses import PauseTrip

RULES = ("max_deactivated_pct", "max_updated_pct", "max_row_drop_pct")
MIN_COUNT = "min_count"
DEFAULT_MIN_COUNT = 25
# the district's usual file size is the median row count of this many applied uploads
BASELINE_UPLOADS = 5
DEFAULT_THRESHOLDS: dict[str, float | None] = {
    "max_deactivated_pct": 10,
    "max_updated_pct": 75,
    "max_row_drop_pct": 25,
    MIN_COUNT: DEFAULT_MIN_COUNT,
}
OFF: dict[str, float | None] = {**dict.fromkeys(RULES), MIN_COUNT: DEFAULT_MIN_COUNT}
KEYS = (*RULES, MIN_COUNT)


class GuardConfigError(ValueError):
    pass


def parse_thresholds(value: Any, where: str = "guard") -> dict[str, float | None]:
    """The master data's `guard:` value. Absent (None): the defaults. `false`/`off`: every
    rule off. A mapping: its keys override the defaults; 0 or null turns a rule off;
    `min_count` is the floor every rule's count must reach (0: no floor)."""
    if value is None:
        return dict(DEFAULT_THRESHOLDS)
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return dict(OFF)
    if not isinstance(value, dict):
        raise GuardConfigError(f"{where} must be a mapping of {', '.join(KEYS)} (or off)")
    unknown = sorted(set(map(str, value)) - set(KEYS))
    if unknown:
        raise GuardConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}"
        )
    out = dict(DEFAULT_THRESHOLDS)
    for key, limit in value.items():
        if key == MIN_COUNT:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise GuardConfigError(
                    f"{where}.{key} must be a whole number of students or rows >= 0 "
                    f"(0: no floor), got {limit!r}"
                )
            out[key] = limit
            continue
        if limit is None or limit == 0:
            out[key] = None
            continue
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 100:
            raise GuardConfigError(f"{where}.{key} must be a percentage in (0, 100], or 0/null")
        out[key] = limit
    return out


def usual_rows(recent_rows: tuple[int, ...] | list[int]) -> int | None:
    """The district's usual file size: the median row count of its last applied uploads
    (half up between the two middle ones), None before the first."""
    if not recent_rows:
        return None
    return math.floor(statistics.median(recent_rows) + 0.5)


@dataclass(frozen=True)
class GuardFigures:
    """What the rules compare, all from the plan against the snapshot."""

    active_before: int  # active students of the district before the upload
    students_before: int  # students of the district before the upload
    deactivated: int  # students the upload deactivates (file rows + absent in full roster)
    updated: int  # rows counted `updated`
    rows: int  # data rows of this file
    # data rows of the district's last applied uploads (up to BASELINE_UPLOADS, newest
    # first); empty: none yet, no baseline
    recent_rows: tuple[int, ...] = ()

    @property
    def usual_rows(self) -> int | None:
        return usual_rows(self.recent_rows)

    def as_dict(self) -> dict[str, Any]:
        figures = asdict(self)
        figures["recent_rows"] = list(self.recent_rows)
        return {**figures, "usual_rows": self.usual_rows}


@dataclass(frozen=True)
class GuardTrip:
    rule: str
    value: int  # the count that tripped the rule
    base: int  # what it is a share of
    pct: float  # value / base * 100, rounded to one decimal
    limit: float
    message: str
    min_count: int = 0  # the floor the count reached

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(value: int, base: int) -> float:
    return value * 100.0 / base


def shown_pct(pct: float, limit: float) -> str:
    """`30`, `48.6`: one decimal at most, more only when one would not show it above the
    limit (10.04% against 10% reads `10.04`, not `10`)."""
    for digits in (1, 2, 3):
        text = f"{pct:.{digits}f}"
        if float(text) > limit:
            break
    return text.rstrip("0").rstrip(".")


def _measures(f: GuardFigures) -> dict[str, tuple[int, int, str]]:
    """Per rule: the count, its base, and how the message says it."""
    usual = f.usual_rows or 0
    dropped = max(0, usual - f.rows)
    n = len(f.recent_rows)
    over = "the last applied upload" if n == 1 else f"the last {n} applied uploads"
    return {
        "max_deactivated_pct": (
            f.deactivated,
            f.active_before,
            f"deactivates {f.deactivated:,} of {f.active_before:,} active students",
        ),
        "max_updated_pct": (
            f.updated,
            f.students_before,
            f"updates {f.updated:,} of {f.students_before:,} students",
        ),
        "max_row_drop_pct": (
            dropped,
            usual,
            f"has {f.rows:,} data rows, {dropped:,} fewer than the usual {usual:,} "
            f"(median of {over})",
        ),
    }


def evaluate(thresholds: dict[str, float | None], f: GuardFigures) -> list[GuardTrip]:
    """Every rule that trips (empty: the upload may be applied)."""
    if not f.recent_rows:
        return []  # no applied upload yet: the first one sets the baseline
    floor = thresholds.get(MIN_COUNT, DEFAULT_MIN_COUNT)
    floor = int(floor) if floor is not None else DEFAULT_MIN_COUNT
    trips = []
    for rule, (value, base, said) in _measures(f).items():
        limit = thresholds.get(rule)
        if not limit or base <= 0 or value < floor or _pct(value, base) <= limit:
            continue
        pct = _pct(value, base)
        shown = shown_pct(pct, limit) + ("% fewer" if rule == "max_row_drop_pct" else "%")
        trips.append(
            GuardTrip(
                rule,
                value,
                base,
                round(pct, 1),
                limit,
                f"{said}, {shown}, limit {limit:g}%",
                floor,
            )
        )
    return trips


def trip_record(trips: Sequence[GuardTrip | PauseTrip]) -> dict[str, Any] | None:
    """What is stored in uploads.guard_trip: the first rule and every rule that tripped
    (a pause rule, core.pauses, comes first: it takes precedence)."""
    if not trips:
        return None
    return {
        "rule": trips[0].rule,
        "message": "; ".join(t.message for t in trips),
        "trips": [t.as_dict() for t in trips],
    }
