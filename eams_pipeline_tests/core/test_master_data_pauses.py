"""The master data's `pauses:` key: a list of {from, to} local dates, as strict as the
other keys (dates only, from <= to, no day in two pauses), each problem naming its line and
the district; a date YAML cannot build (2026-02-30) is a problem, not a crash."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from eams_pipeline.core.master_data import MasterDataError, parse_master_data
from eams_pipeline.core.pauses import Pause
from eams_pipeline_tests.builders import district_doc

HEAD = yaml.safe_dump({"districts": [district_doc(code="D7")]}, sort_keys=False)


def _with_pauses(lines: str) -> str:
    """The district's YAML with a `pauses:` block (its items indented under it)."""
    return HEAD + "  pauses:\n" + "".join(f"  {line}\n" for line in lines.strip().splitlines())


def _line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def _problems(text: str) -> list[str]:
    with pytest.raises(MasterDataError) as info:
        parse_master_data(text)
    return [str(p) for p in info.value.problems]


def test_pauses_are_read_as_local_dates_in_date_order() -> None:
    text = _with_pauses(
        """
- {from: 2026-12-21, to: 2027-01-01}
- from: 2026-06-15
  to: "2026-08-20"
"""
    )
    [district] = parse_master_data(text)
    assert district.pauses == (
        Pause(dt.date(2026, 6, 15), dt.date(2026, 8, 20)),
        Pause(dt.date(2026, 12, 21), dt.date(2027, 1, 1)),
    )
    assert parse_master_data(HEAD)[0].pauses == ()  # no key: no pauses
    assert parse_master_data(HEAD + "  pauses: []\n")[0].pauses == ()
    assert parse_master_data(HEAD + "  pauses:\n")[0].pauses == ()


def test_a_pause_must_end_on_or_after_its_first_day_and_share_no_day() -> None:
    text = _with_pauses(
        """
- {from: 2026-06-15, to: 2026-08-20}
- {from: 2026-08-20, to: 2026-08-27}
- {from: 2026-12-24, to: 2026-12-20}
- {from: 2026-08-21, to: 2026-08-21}
- {from: 2026-08-28, to: 2026-08-30}
"""
    )
    first = _line_of(text, "from: 2026-06-15")
    assert _problems(text) == [
        f"line {first + 1}: district D7: pauses[1] (2026-08-20 to 2026-08-27) overlaps "
        f"pauses[0] (2026-06-15 to 2026-08-20, line {first}): give each day in one pause only",
        f"line {first + 2}: district D7: pauses[2]: to 2026-12-20 is before from 2026-12-24: "
        "a pause runs from its first day to its last (both included)",
        f"line {first + 3}: district D7: pauses[3] (2026-08-21 to 2026-08-21) overlaps "
        f"pauses[1] (2026-08-20 to 2026-08-27, line {first + 1}): give each day in one pause "
        "only",
    ]
    # a one-day pause, and one starting the day after another ends, are fine
    one_day = _with_pauses(
        "- {from: 2026-08-21, to: 2026-08-21}\n- {from: 2026-08-22, to: 2026-08-23}"
    )
    assert len(parse_master_data(one_day)[0].pauses) == 2


def test_wrong_types_name_the_line_and_key() -> None:
    text = _with_pauses(
        """
- {from: 2026-02-30, to: 2026-03-01}
- {from: 2026-04-01T10:00:00, to: 5}
- {from: 2026-04-01, until: 2026-04-02}
- {from: "04/01/2026", to: "20260402"}
"""
    )
    line = _line_of(text, "2026-02-30")
    assert _problems(text) == [
        f"line {line}: district D7: pauses[0].from must be a date YYYY-MM-DD, got "
        "'2026-02-30': there is no such day",
        f"line {line + 1}: district D7: pauses[1].from must be a date YYYY-MM-DD without a "
        "time of day, got 2026-04-01 10:00:00",
        f"line {line + 1}: district D7: pauses[1].to must be a date YYYY-MM-DD, got the number 5",
        f"line {line + 2}: district D7: `pauses[2].to` is required",
        f"line {line + 2}: district D7: unknown key `until`; known keys: from, to",
        f"line {line + 3}: district D7: pauses[3].from must be a date YYYY-MM-DD, got '04/01/2026'",
        f"line {line + 3}: district D7: pauses[3].to must be a date YYYY-MM-DD, got '20260402'",
    ]
    assert _problems(HEAD + "  pauses: 2026-06-15\n") == [
        f"line {_line_of(HEAD + '  pauses:', '  pauses:')}: district D7: pauses must be a list "
        "(one `- ` line per item, or [a, b]), got the date 2026-06-15"
    ]


def test_an_impossible_date_elsewhere_is_text_not_a_crash() -> None:
    """A bug: an unquoted 2026-02-30 anywhere made yaml.load raise a bare ValueError (a
    traceback, no line). Now it is the text it looks like, and each key's rule judges it."""
    named = HEAD.replace("name: District D7", "name: 2026-02-30")
    assert parse_master_data(named)[0].name == "2026-02-30"
    coded = HEAD.replace("code: D7\n", "code: 2026-02-30\n", 1)  # a district code may look so
    assert parse_master_data(coded)[0].code == "2026-02-30"
    order = HEAD.replace("licenses: 100", "licenses: 2026-13-01")
    assert _problems(order) == [
        f"line {_line_of(order, '2026-13-01')}: district D7 enterprise_order: licenses must be "
        "a whole number, got '2026-13-01'"
    ]
