"""Pauses (core.pauses): the two guard rules and the missing-upload window, with the clock
injected: the upload's received time in the district's time zone decides, both ends of a
pause included, across time zones and daylight-saving changes."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eams_pipeline.core.guard import GuardFigures, evaluate, trip_record
from eams_pipeline.core.pauses import (
    FIRST_AFTER_PAUSE,
    PAUSED,
    Pause,
    overlaps,
    parse_stored,
    pause_trip,
    spans,
    stored,
    unpaused_window_start,
)

D = dt.date
UTC = dt.UTC
SUMMER = Pause(D(2026, 6, 15), D(2026, 8, 20))  # 67 days
LA, CHICAGO, AUCKLAND = "America/Los_Angeles", "America/Chicago", "Pacific/Auckland"


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def trip(received: dt.datetime, pauses=(SUMMER,), timezone: str = CHICAGO, last=None):
    return pause_trip(received, timezone=timezone, pauses=pauses, last_applied_at=last)


def test_an_upload_on_a_paused_day_is_paused_both_ends_included_in_local_time() -> None:
    # Chicago is UTC-5 in summer: the pause runs 2026-06-15 05:00 UTC .. 2026-08-21 05:00 UTC
    assert trip(at(2026, 6, 15, 4, 59)) is None  # 23:59 on the 14th, local: before it
    first = trip(at(2026, 6, 15, 5, 0))  # 00:00 on the 15th
    assert first is not None and first.rule == PAUSED
    assert first.message == "uploads are paused from 2026-06-15 to 2026-08-20"
    assert (first.pause_from, first.pause_to, first.days) == ("2026-06-15", "2026-08-20", 67)
    assert (first.received_on, first.timezone) == ("2026-06-15", CHICAGO)
    last = trip(at(2026, 8, 21, 4, 59))  # 23:59 on the 20th, local: the last day, included
    assert last is not None and last.rule == PAUSED and last.received_on == "2026-08-20"
    after = trip(at(2026, 8, 21, 5, 0))  # 00:00 on the 21st: the pause is over
    assert after is not None and after.rule == FIRST_AFTER_PAUSE


def test_the_same_moment_is_paused_in_one_time_zone_and_not_in_another() -> None:
    moment = at(2026, 8, 21, 3, 0)  # 20:00 on the 20th in Los Angeles, 15:00 on the 21st NZ
    assert trip(moment, timezone=LA).rule == PAUSED
    assert trip(moment, timezone=AUCKLAND).rule == FIRST_AFTER_PAUSE
    assert trip(moment, timezone="UTC").rule == FIRST_AFTER_PAUSE  # the 21st in UTC
    early = at(2026, 6, 14, 13, 0)  # the 14th in UTC and Los Angeles, the 15th in Auckland
    assert trip(early, timezone="UTC") is None and trip(early, timezone=LA) is None
    assert trip(early, timezone=AUCKLAND).rule == PAUSED


def test_the_local_date_follows_daylight_saving_time() -> None:
    # Los Angeles moves from PST (UTC-8) to PDT (UTC-7) on 2026-03-08 at 02:00
    pause = (Pause(D(2026, 2, 1), D(2026, 3, 8)),)
    # 07:30 UTC on the 9th: 00:30 PDT on the 9th (after the pause); a fixed PST offset
    # would say 23:30 on the 8th (paused)
    assert trip(at(2026, 3, 9, 7, 30), pause, LA).rule == FIRST_AFTER_PAUSE
    assert trip(at(2026, 3, 9, 6, 30), pause, LA).rule == PAUSED  # 23:30 PDT on the 8th
    # and back to PST on 2026-11-01: 07:30 UTC on the 2nd is 23:30 PST on the 1st
    autumn = (Pause(D(2026, 10, 1), D(2026, 11, 1)),)
    assert trip(at(2026, 11, 2, 7, 30), autumn, LA).rule == PAUSED
    assert trip(at(2026, 11, 2, 8, 0), autumn, LA).rule == FIRST_AFTER_PAUSE  # 00:00 PST


def test_first_after_pause_only_for_21_days_or_more_and_until_an_upload_is_applied() -> None:
    received = at(2026, 9, 1, 12)
    assert trip(received).message == (
        "first upload after a pause of 67 days (2026-06-15 to 2026-08-20); please review"
    )
    three_weeks = (Pause(D(2026, 8, 1), D(2026, 8, 21)),)  # 21 days: long enough
    assert trip(received, three_weeks).days == 21
    assert trip(received, (Pause(D(2026, 8, 2), D(2026, 8, 21)),)) is None  # 20 days
    assert trip(received, (Pause(D(2026, 8, 10), D(2026, 8, 19)),)) is None  # 10 days
    # an upload applied after the pause ended (local date after its last day): no review
    assert trip(received, last=at(2026, 8, 21, 5, 0)) is None  # 00:00 on the 21st, Chicago
    # one applied during the pause (a paused hold approved) or before it does not count
    assert trip(received, last=at(2026, 8, 21, 4, 59)).rule == FIRST_AFTER_PAUSE
    assert trip(received, last=at(2026, 6, 1)).rule == FIRST_AFTER_PAUSE
    # months later, still nothing applied since: still the first after the pause
    assert trip(at(2027, 1, 5), last=at(2026, 6, 1)).rule == FIRST_AFTER_PAUSE


def test_pauses_without_a_free_day_between_them_are_one_pause() -> None:
    # two 14-day pauses back to back: one of 28 days
    halves = (Pause(D(2026, 8, 15), D(2026, 8, 28)), Pause(D(2026, 8, 1), D(2026, 8, 14)))
    assert spans(halves) == (Pause(D(2026, 8, 1), D(2026, 8, 28)),)
    got = trip(at(2026, 9, 1, 12), halves)
    assert got.rule == FIRST_AFTER_PAUSE and got.days == 28
    assert got.message.endswith("(2026-08-01 to 2026-08-28); please review")
    assert trip(at(2026, 8, 15, 12), halves).message == (
        "uploads are paused from 2026-08-01 to 2026-08-28"
    )
    gap = (Pause(D(2026, 8, 1), D(2026, 8, 14)), Pause(D(2026, 8, 16), D(2026, 8, 28)))
    assert trip(at(2026, 9, 1, 12), gap) is None  # a free day: two short pauses
    # the latest long pause is the one reviewed, even after a short one since
    later = (SUMMER, Pause(D(2026, 9, 7), D(2026, 9, 8)))
    assert trip(at(2026, 9, 10, 12), later).pause_to == "2026-08-20"


def test_a_pause_rule_comes_first_in_the_guard_record() -> None:
    figures = GuardFigures(100, 100, 30, 0, 100, recent_rows=(100,))
    held = [trip(at(2026, 7, 1)), *evaluate({"max_deactivated_pct": 10, "min_count": 1}, figures)]
    record = trip_record(held)
    assert record["rule"] == PAUSED
    assert [t["rule"] for t in record["trips"]] == [PAUSED, "max_deactivated_pct"]
    assert record["message"].startswith("uploads are paused from 2026-06-15 to 2026-08-20; ")
    assert record["trips"][0]["days"] == 67


def test_no_pauses_no_verdict_and_a_naive_time_is_refused() -> None:
    assert trip(at(2026, 7, 1), pauses=()) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        trip(dt.datetime(2026, 7, 1))
    with pytest.raises(ValueError, match="cannot end before it"):
        Pause(D(2026, 7, 2), D(2026, 7, 1))


def test_overlaps_and_storage() -> None:
    listed = [
        Pause(D(2026, 8, 20), D(2026, 8, 27)),
        SUMMER,
        Pause(D(2026, 8, 28), D(2026, 8, 30)),  # the day after: no overlap
        Pause(D(2026, 6, 1), D(2026, 6, 15)),  # shares the 15th with SUMMER
    ]
    assert overlaps(listed) == [(3, 1), (1, 0)]
    assert stored(listed[:2]) == [
        {"from": "2026-06-15", "to": "2026-08-20"},
        {"from": "2026-08-20", "to": "2026-08-27"},
    ]
    assert parse_stored(stored(listed)) == tuple(sorted(listed))
    assert parse_stored(None) == ()


def test_the_missing_window_does_not_count_paused_days() -> None:
    window = dt.timedelta(hours=24)
    # due 06:00 Chicago (CDT, UTC-5) on the 21st, the day after the pause: the 24 hours are
    # 00:00-06:00 on the 21st and 18 hours before the pause (from 06:00 on the 14th)
    due = at(2026, 8, 21, 11)
    assert unpaused_window_start(due, window, timezone=CHICAGO, pauses=(SUMMER,)) == at(
        2026, 6, 14, 11
    )
    # the day after that, the window is clear of the pause
    later = at(2026, 8, 22, 11)
    assert unpaused_window_start(later, window, timezone=CHICAGO, pauses=(SUMMER,)) == (
        later - window
    )
    assert unpaused_window_start(due, window, timezone=CHICAGO, pauses=()) == due - window
    # two pauses with a free day between them: the free day counts, the rest is skipped
    two = (Pause(D(2026, 8, 1), D(2026, 8, 9)), Pause(D(2026, 8, 11), D(2026, 8, 20)))
    start = unpaused_window_start(due, window, timezone=CHICAGO, pauses=two)
    # 6 hours on the 21st, 24 hours on the 10th would be more than enough: 18 of them
    assert start == at(2026, 8, 10, 11)


def _unpaused(start: dt.datetime, end: dt.datetime, timezone: str, pauses) -> dt.timedelta:
    """The time between two moments that falls on no paused local day, day by day."""
    tz = zoneinfo.ZoneInfo(timezone)
    total, day = dt.timedelta(), start.astimezone(tz).date()
    while True:
        begin = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC)
        if begin >= end:
            return total
        after = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
        lo, hi = max(begin, start), min(after.astimezone(UTC), end)
        if hi > lo and not any(p.covers(day) for p in pauses):
            total += hi - lo
        day += dt.timedelta(days=1)


@given(
    due_hours=st.integers(0, 24 * 120),
    starts=st.lists(st.integers(0, 110), max_size=4),
    lengths=st.lists(st.integers(1, 30), min_size=4, max_size=4),
    timezone=st.sampled_from([LA, CHICAGO, AUCKLAND, "Europe/London", "UTC"]),
)
@settings(max_examples=200, deadline=None)
def test_the_window_holds_exactly_24_unpaused_hours_across_dst(
    due_hours: int, starts: list[int], lengths: list[int], timezone: str
) -> None:
    # due moments over a spring and its clock change; pauses anywhere in it
    due = at(2026, 2, 1) + dt.timedelta(hours=due_hours)
    pauses = tuple(
        Pause(D(2026, 1, 1) + dt.timedelta(days=s), D(2026, 1, 1) + dt.timedelta(days=s + n - 1))
        for s, n in zip(starts, lengths, strict=False)
    )
    window = dt.timedelta(hours=24)
    start = unpaused_window_start(due, window, timezone=timezone, pauses=pauses)
    assert start <= due - window
    assert _unpaused(start, due, timezone, pauses) == window
