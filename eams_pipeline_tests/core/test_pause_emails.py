"""The emails of an upload held by a pause rule say why in words (the pause's dates), for a
held, a discarded and an approved upload; a pause message that is not dates and days is
refused, as a figure rule's that is not counts and percentages is."""

from __future__ import annotations

import datetime as dt

import pytest

from eams_pipeline.core.guard import trip_record
from eams_pipeline.core.notifications import build_upload_email
from eams_pipeline.core.pauses import Pause, pause_trip

SUMMER = Pause(dt.date(2026, 6, 15), dt.date(2026, 8, 20))


def _guard(received: dt.datetime) -> dict:
    trip = pause_trip(received, timezone="America/Chicago", pauses=(SUMMER,), last_applied_at=None)
    assert trip is not None
    record = trip_record([trip])
    assert record is not None
    return record


PAUSED = _guard(dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC))
FIRST = _guard(dt.datetime(2026, 9, 1, 12, tzinfo=dt.UTC))


def _text(status: str, guard: dict, reviewed_by: str | None = None) -> str:
    summary = {
        "upload_id": 42,
        "status": status,
        "rows": 2,
        "added": 2,
        "activated": 0,
        "deactivated": 0,
        "updated": 0,
        "unchanged": 0,
        "errors": 0,
        "error_codes": {},
        "guard": guard,
    }
    mail = build_upload_email(
        district_code="D001",
        district_name="Springfield",
        contacts=["sis-admin@springfield.example.org"],
        sender="eams@vantage.example",
        summary=summary,
        error_file_path=None,
        upload_key="D001-20260701T120000000000Z",
        reviewed_by=reviewed_by,
    )
    return " ".join(mail.get_content().split())


def test_held_paused_says_the_pause_and_what_to_do() -> None:
    text = _text("held", PAUSED)
    assert "HELD FOR REVIEW: it arrived while uploads of your district are paused" in text
    assert "If it was sent by mistake, nothing needs to be done." in text
    assert "uploads paused (paused): uploads are paused from 2026-06-15 to 2026-08-20." in text
    assert "unusual share" not in text


def test_first_after_pause_held_discarded_and_approved() -> None:
    reason = (
        "first upload after a long pause (first_after_pause): first upload after a pause of "
        "67 days (2026-06-15 to 2026-08-20); please review."
    )
    held = _text("held", FIRST)
    assert "HELD FOR REVIEW: it is the first file after a long pause" in held and reason in held
    discarded = _text("discarded", FIRST, reviewed_by="alice")
    assert "DISCARDED after review by alice: it was held because it is the first file" in (
        discarded
    )
    approved = _text("processed", FIRST, reviewed_by="bob")
    assert "HELD for review because it is the first file after a long pause" in approved
    assert "APPROVED after review by bob" in approved and reason in approved


def test_a_pause_message_must_be_dates_and_days() -> None:
    bad = {**PAUSED, "trips": [{**PAUSED["trips"][0], "message": "Student S-1 Quixano"}]}
    with pytest.raises(ValueError, match="dates and days"):
        _text("held", bad)
