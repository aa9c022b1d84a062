"""The check result email (core.notifications.build_check_email): what a check drop would
have come to, the change guard's verdict, the counts and codes, where the report is; no
student data, and nothing but a checked file's verdicts accepted."""

from __future__ import annotations

import pytest

from eams_pipeline.core.names import check_report_name
from eams_pipeline.core.notifications import build_check_email

KEY = "D001-20260114T020000123456Z"
REPORT = f"/d001/reports/{check_report_name(KEY)}"
GUARD = {
    "rule": "max_deactivated_pct",
    "message": "deactivates 30 of 100 active students, 30%, limit 10%",
    "trips": [
        {
            "rule": "max_deactivated_pct",
            "message": "deactivates 30 of 100 active students, 30%, limit 10%",
        }
    ],
}


def summary(status: str, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "upload_id": None,
        "district": "D001",
        "status": status,
        "rows": 40,
        "added": 2,
        "activated": 1,
        "deactivated": 30,
        "updated": 3,
        "unchanged": 2,
        "errors": 2,
        "error_codes": {"INVALID_GRADE": 1, "USERNAME_TAKEN": 1},
        "error_file": REPORT,
        "deactivated_missing": 0,
        "guard": None,
    }
    base.update(overrides)
    return base


def email(status: str, file_error: str | None = None, **overrides: object):
    return build_check_email(
        district_code="D001",
        district_name="Springfield USD",
        contacts=["sis@springfield.example.org"],
        sender="eams@example.com",
        upload_key=KEY,
        summary=summary(status, **overrides),
        report_path=REPORT,
        file_error=file_error,
    )


def test_report_name() -> None:
    assert check_report_name(KEY) == "students_check_D001-20260114T020000123456Z.csv"


def test_a_check_the_guard_would_hold_gives_the_rule_the_counts_and_the_codes() -> None:
    message = email("held", guard=GUARD)
    body = message.get_content()
    assert message["Subject"] == (
        "eAMS check result: the file would be HELD for review, nothing applied: "
        f"Springfield USD (D001), check {KEY}"
    )
    assert message["To"] == "sis@springfield.example.org"
    said = " ".join(body.split())
    assert "was CHECKED by the same engine that applies your nightly upload" in said
    assert "NOTHING was applied" in said and "no password was stored" in said
    assert "the file would be HELD for review by the change guard" in said
    assert "Change guard: it WOULD HOLD the file for review:" in body
    assert (
        "many students deactivated (max_deactivated_pct): the file deactivates 30 of 100 "
        "active students, 30%, limit 10%." in said
    )
    assert "  Students deactivated                  30\n" in body
    assert "  Rows with errors (not applied)         2\n" in body
    assert "  INVALID_GRADE                          1\n" in body
    assert "  USERNAME_TAKEN                         1\n" in body
    assert f"\n  {REPORT}\n" in body
    assert "It lists every error with its line number" in said
    assert all(len(line) <= 76 for line in body.splitlines() if REPORT not in line)


def test_a_check_that_would_be_rejected_gives_the_error_and_no_counts() -> None:
    message = email(
        "rejected",
        file_error="HEADER_MISMATCH: The header differs from the template.",
        rows=5,
        added=0,
        activated=0,
        deactivated=0,
        updated=0,
        unchanged=0,
        errors=5,
        error_codes={"HEADER_MISMATCH": 1},
    )
    body = message.get_content()
    assert message["Subject"].startswith("eAMS check result: the file would be REJECTED,")
    assert "Error:\n  HEADER_MISMATCH: The header differs from the template." in body
    assert "Change guard: not evaluated (the file would be rejected)." in body
    assert "Counts the file would apply" not in body


def test_a_clean_check_says_so_and_that_its_report_is_only_the_header() -> None:
    message = email(
        "processed",
        rows=5,
        added=5,
        activated=0,
        deactivated=0,
        updated=0,
        unchanged=0,
        errors=0,
        error_codes={},
    )
    body = " ".join(message.get_content().split())
    assert message["Subject"].startswith("eAMS check result: no errors, nothing applied:")
    assert "the file would be processed SUCCESSFULLY: every row would be applied" in body
    assert "Change guard: it would let the file through." in body
    assert "It holds only the header line: the file has no errors." in body
    assert "Errors by code" not in body


def test_partially_processed_names_the_rows_with_errors_in_the_subject() -> None:
    assert email("partially_processed")["Subject"].startswith(
        "eAMS check result: 2 rows with errors, nothing applied:"
    )
    assert email("partially_processed", errors=1)["Subject"].startswith(
        "eAMS check result: 1 row with errors, nothing applied:"
    )


@pytest.mark.parametrize("status", ["checked", "superseded", "received", "approved"])
def test_only_what_a_checked_file_can_come_to_is_accepted(status: str) -> None:
    with pytest.raises(ValueError, match="not what a checked file can come to"):
        email(status)


def test_nothing_but_counts_codes_and_guard_figures_gets_in() -> None:
    with pytest.raises(ValueError, match="is not an error code"):
        email("partially_processed", error_codes={"Hunter2 secret": 1})
    with pytest.raises(ValueError, match="must be an integer"):
        email("partially_processed", errors="STU-1")
    with pytest.raises(ValueError, match="counts and percentages"):
        email("held", guard={"trips": [{"rule": "max_deactivated_pct", "message": "STU-1!"}]})
    with pytest.raises(ValueError, match="no contact"):
        build_check_email(
            district_code="D001",
            district_name="x",
            contacts=[],
            sender="e@x",
            upload_key=KEY,
            summary=summary("processed"),
            report_path=REPORT,
        )
