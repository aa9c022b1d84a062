"""The change guard: does an upload change so much of a district that a person should look
at it before it is applied? Pure: the plan's counts and the district's figures in, the
rule that tripped (with its figures) out.

Three rules, each a percentage limit (0 or None turns the rule off):

    max_deactivated_pct  students the upload deactivates (rows and, in full-roster mode,
                         the students absent from the file), as a share of the district's
                         active students before the upload
    max_updated_pct      rows counted `updated`, as a share of the district's students
                         before the upload
    max_row_drop_pct     how many fewer data rows the file has than the last applied upload
                         of the district (a truncated export), as a share of that upload's

A rule trips when its percentage is strictly greater than its limit: exactly at the limit
passes. A rule whose base is zero (no active students, no students, no applied upload
yet) cannot trip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RULES = ("max_deactivated_pct", "max_updated_pct", "max_row_drop_pct")
DEFAULT_THRESHOLDS: dict[str, float | None] = {
    "max_deactivated_pct": 10,
    "max_updated_pct": 75,
    "max_row_drop_pct": 25,
}
OFF: dict[str, float | None] = dict.fromkeys(RULES)


class GuardConfigError(ValueError):
    pass


def parse_thresholds(value: Any, where: str = "guard") -> dict[str, float | None]:
    """The master data's `guard:` value. Absent (None): the defaults. `false`/`off`: every
    rule off. A mapping: its keys override the defaults; 0 or null turns a rule off."""
    if value is None:
        return dict(DEFAULT_THRESHOLDS)
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return dict(OFF)
    if not isinstance(value, dict):
        raise GuardConfigError(f"{where} must be a mapping of {', '.join(RULES)} (or off)")
    unknown = sorted(set(value) - set(RULES))
    if unknown:
        raise GuardConfigError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(RULES)}"
        )
    out = dict(DEFAULT_THRESHOLDS)
    for key, limit in value.items():
        if limit is None or limit == 0:
            out[key] = None
            continue
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 100:
            raise GuardConfigError(f"{where}.{key} must be a percentage in (0, 100], or 0/null")
        out[key] = limit
    return out


@dataclass(frozen=True)
class GuardFigures:
    """What the rules compare, all from the plan against the snapshot."""

    active_before: int  # active students of the district before the upload
    students_before: int  # students of the district before the upload
    deactivated: int  # students the upload deactivates (file rows + absent in full roster)
    updated: int  # rows counted `updated`
    rows: int  # data rows of this file
    last_applied_rows: int | None  # data rows of the last applied upload (None: none yet)

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


@dataclass(frozen=True)
class GuardTrip:
    rule: str
    value: int  # the count that tripped the rule
    base: int  # what it is a share of
    pct: float  # value / base * 100, rounded to one decimal
    limit: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(value: int, base: int) -> float:
    return value * 100.0 / base


def _measures(f: GuardFigures) -> dict[str, tuple[int, int, str]]:
    """Per rule: the count, its base, and how the message says it."""
    last = f.last_applied_rows or 0
    dropped = max(0, last - f.rows)
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
            last,
            f"has {f.rows:,} data rows, {dropped:,} fewer than the {last:,} of the last "
            "applied upload",
        ),
    }


def evaluate(thresholds: dict[str, float | None], f: GuardFigures) -> list[GuardTrip]:
    """Every rule that trips (empty: the upload may be applied)."""
    trips = []
    for rule, (value, base, said) in _measures(f).items():
        limit = thresholds.get(rule)
        if not limit or base <= 0 or _pct(value, base) <= limit:
            continue
        pct = _pct(value, base)
        shown = f"({pct:.1f}% fewer)" if rule == "max_row_drop_pct" else f"({pct:.1f}%)"
        trips.append(
            GuardTrip(rule, value, base, round(pct, 1), limit, f"{said} {shown}, limit {limit:g}%")
        )
    return trips


def trip_record(trips: list[GuardTrip]) -> dict[str, Any] | None:
    """What is stored in uploads.guard_trip: the first rule and every rule that tripped."""
    if not trips:
        return None
    return {
        "rule": trips[0].rule,
        "message": "; ".join(t.message for t in trips),
        "trips": [t.as_dict() for t in trips],
    }
