"""The lines of an upload's summary that the terminal tests do not reach: a superseded
upload, a full roster's absent students, the held uploads a newer one superseded, and the
change guard's limits in `eams districts list`."""

from __future__ import annotations

from eams_pipeline.cli_output import guard_text, upload_summary
from eams_pipeline.core.guard import DEFAULT_THRESHOLDS, OFF


def _summary(status: str, **figures: object) -> dict[str, object]:
    counts = dict.fromkeys(
        ("rows", "added", "activated", "deactivated", "updated", "unchanged", "errors"), 0
    )
    return {
        "upload_id": 7, "district": "D1", "status": status, **counts, "error_codes": {},
        "error_file": None, "deactivated_missing": 0, "guard": None, **figures,
    }  # fmt: skip


def test_a_superseded_upload_names_the_upload_applied_first() -> None:
    lines = upload_summary(
        _summary("superseded", rows=3, unchanged=3),
        upload_key="D1-20260114T020000000000Z",
        superseded_by="D1-20260115T020000000000Z",
    )
    assert lines[0] == "SUPERSEDED (nothing applied): upload D1-20260114T020000000000Z of D1"
    assert lines[2].startswith("  superseded by upload D1-20260115T020000000000Z, received after")
    assert "process the file again if it must be applied over that upload" in lines[2]


def test_a_full_roster_and_the_held_uploads_it_superseded() -> None:
    lines = upload_summary(
        _summary("processed", rows=2, unchanged=2, deactivated_missing=4),
        upload_key="D1-k",
        superseded_held=["D1-h1", "D1-h2"],
    )
    assert lines == [
        "Processed: upload D1-k of D1",
        "  2 rows: 0 added, 0 activated, 0 deactivated, 0 updated, 2 unchanged, 0 errors",
        "  and 4 students absent from the file deactivated (full roster)",
        "  held uploads it superseded: D1-h1, D1-h2",
    ]


def test_guard_limits_in_a_cell() -> None:
    assert guard_text(dict(DEFAULT_THRESHOLDS)) == "default"
    assert guard_text(None) == "default"
    assert guard_text(dict(OFF)) == "off"
    assert guard_text({**DEFAULT_THRESHOLDS, "max_row_drop_pct": None, "min_count": 5}) == (
        "deactivated 10%, updated 75%, row drop off, min 5"
    )
    assert guard_text({**DEFAULT_THRESHOLDS, "max_deactivated_pct": 12.5}).startswith(
        "deactivated 12.5%, "
    )


def test_a_file_held_by_a_pause_says_what_to_weigh() -> None:
    trip = {"rule": "paused", "message": "received on 2026-12-24, in the pause winter"}
    lines = upload_summary(
        _summary("held", rows=1, unchanged=1, guard={**trip, "trips": [trip]}),
        upload_key="D1-k",
        approve_file="students.csv",
    )
    assert lines[2:4] == [
        "  guard rule paused: received on 2026-12-24, in the pause winter",
        "    hint: it arrived on a day the district's master data pauses (`pauses:`); approve "
        "it only if the district wants it applied during the pause, else discard it",
    ]
    assert "    eams uploads approve D1-k --file students.csv --by YOUR_NAME" in lines
