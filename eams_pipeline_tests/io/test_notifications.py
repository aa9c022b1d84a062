"""District outcome emails and operator alerts (SPEC §7): content, and no student data."""

from __future__ import annotations

import re
from email.message import EmailMessage
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from eams_pipeline.core.notifications import build_failure_email, build_upload_email
from eams_pipeline.orchestration.resources import SmtpResource

if TYPE_CHECKING:
    from eams_pipeline.devtools.smtp_server import LoopbackSmtpServer

CONTACTS = ["sis-admin@springfield.example.org", "it-helpdesk@springfield.example.org"]
SENDER = "eams-noreply@vantage.example"
ERROR_FILE = "/d001/errors/students_errors_42.csv"

# The upload these emails are about; its values must never reach an email.
FRAME = pd.DataFrame(
    {
        "School Code": ["101", "101", "201", "201"],
        "Student ID": ["S-771204", "S-771205", "S-771206", "S-771207"],
        "Last Name": ["Quixano", "Zbyszewska", "Okonkwo-Brandt", "Villafuerte"],
        "First Name": ["Marisol", "Jadwiga", "Chidubem", "Anselmo"],
        "Username": ["mquixano", "jzbyszewska", "cokonkwo", "avillafuerte"],
        "Password": ["Tr0ub4dor&3", "correct-horse-9", "Pa55-w0rd-x", ""],
        "Email": ["mq@kids.example", "", "", "av@kids.example"],
        "Status": ["A", "A", "D", "Q"],
    }
)
STUDENT_VALUES = {
    str(v)
    for column in ("Student ID", "Last Name", "First Name", "Username", "Password", "Email")
    for v in FRAME[column]
    if v
}


def _summary(status: str, **overrides: object) -> dict[str, object]:
    """A processing summary of FRAME: 2 added, 1 deactivated, 1 error."""
    summary: dict[str, object] = {
        "upload_id": 42,
        "district": "D001",
        "status": status,
        "rows": len(FRAME),
        "added": 2,
        "activated": 0,
        "deactivated": 1,
        "updated": 0,
        "unchanged": 0,
        "errors": 1,
        "error_codes": {"INVALID_STATUS": 1},
        "error_file": "/var/lib/eams/errors/students_errors_42.csv",
    }
    summary.update(overrides)
    return summary


def _email(status: str, file_error: str | None = None, **overrides: object) -> EmailMessage:
    return build_upload_email(
        district_code="D001",
        district_name="Springfield Unified School District",
        contacts=CONTACTS,
        sender=SENDER,
        summary=_summary(status, **overrides),
        error_file_path=ERROR_FILE,
        file_error=file_error,
    )


CLEAN = {"errors": 0, "error_codes": {}, "added": 3}
REJECTED = {
    "rows": 0,
    "added": 0,
    "deactivated": 0,
    "errors": 0,
    "error_codes": {"HEADER_MISMATCH": 1},
}
HEADER_ERROR = (
    "HEADER_MISMATCH: expected header School Code,Student ID,Last Name,First Name,"
    "Middle Name,Grade,Username,Password,Email,Class Name,Status; found School,ID"
)


def test_subjects_name_the_outcome() -> None:
    assert "SUCCESSFUL" in _email("processed", **CLEAN)["Subject"]
    partial = _email("partially_processed")["Subject"]
    assert "PARTIALLY processed" in partial
    assert "(1 row with errors)" in partial
    assert "FAILED" in _email("rejected", HEADER_ERROR, **REJECTED)["Subject"]
    for message in (_email("processed", **CLEAN), _email("partially_processed")):
        assert "FAILED" not in message["Subject"]
        assert "D001" in message["Subject"]
        assert "upload 42" in message["Subject"]


def test_headers() -> None:
    message = _email("partially_processed")
    assert message["From"] == SENDER
    assert [a.strip() for a in message["To"].split(",")] == CONTACTS
    assert message["Message-ID"].endswith("@vantage.example>")
    assert message["Date"]


def test_partial_body_is_exactly_counts_codes_and_the_error_file() -> None:
    body = _email("partially_processed").get_content()
    assert body == (
        "Hello,\n"
        "\n"
        "The students.csv file uploaded by Springfield Unified School District (D001)\n"
        "(upload 42) was PARTIALLY processed: all valid rows were applied; the rows\n"
        "with errors were not. Please correct those rows and include them in the next\n"
        "upload.\n"
        "\n"
        "Counts:\n"
        "  Rows in the file                       4\n"
        "  Students added                         2\n"
        "  Students activated                     0\n"
        "  Students deactivated                   1\n"
        "  Students updated                       0\n"
        "  Rows without changes                   0\n"
        "  Rows with errors (not applied)         1\n"
        "\n"
        "Errors by code:\n"
        "  INVALID_STATUS                         1\n"
        "\n"
        "The error file with every error is on your SFTP site:\n"
        "  /d001/errors/students_errors_42.csv\n"
        "\n"
        "This message contains no student data; the error file lists each error\n"
        "with its line number in the uploaded file.\n"
        "\n"
        "-- \n"
        "MY Access Enterprise AMS (eAMS) batch process. This is an automated message.\n"
    )


def test_successful_body_has_counts_and_no_error_section() -> None:
    body = _email("processed", **CLEAN).get_content()
    assert re.search(r"Students added +3\n", body)
    assert re.search(r"Rows with errors \(not applied\) +0\n", body)
    assert "Errors by code" not in body
    assert ERROR_FILE not in body


def test_rejected_body_names_the_file_error_and_the_error_file() -> None:
    body = _email("rejected", HEADER_ERROR, **REJECTED).get_content()
    flat = " ".join(body.split())
    assert "REJECTED. Nothing was applied" in flat
    assert HEADER_ERROR in flat
    assert ERROR_FILE in body
    assert "Counts:" not in body


def test_rejected_without_a_message_names_the_code() -> None:
    body = _email("rejected", None, **REJECTED).get_content()
    assert "Error:\n  HEADER_MISMATCH\n" in body


def test_a_huge_file_error_is_cut() -> None:
    body = _email("rejected", "FILE_ENCODING: " + "x" * 10_000, **REJECTED).get_content()
    assert len(body) < 4_000
    assert "[...]" in body


def test_no_student_data_anywhere_in_the_message() -> None:
    messages = [
        _email("processed", **CLEAN),
        _email("partially_processed"),
        _email("rejected", HEADER_ERROR, **REJECTED),
    ]
    for message in messages:
        whole = message.as_string() + message.get_content()
        for value in STUDENT_VALUES:
            assert value not in whole, value


def test_the_only_numbers_in_the_body_are_the_counts() -> None:
    summary = _summary("partially_processed")
    body = _email("partially_processed").get_content()
    numbers = set(re.findall(r"\d+", body.replace(ERROR_FILE, "").replace("D001", "")))
    allowed = {str(v) for v in summary.values() if isinstance(v, int)} | {"1"}
    assert numbers <= allowed


@pytest.mark.parametrize(
    "overrides",
    [
        {"error_codes": {"Quixano, Marisol": 1}},  # a value where a code belongs
        {"error_codes": {"INVALID_STATUS": "S-771204"}},
        {"added": "Marisol"},
        {"added": True},
    ],
)
def test_malformed_summaries_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _email("partially_processed", **overrides)


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        _email("done")


def test_no_contacts_is_refused() -> None:
    with pytest.raises(ValueError):
        build_upload_email(
            district_code="D001",
            district_name="Springfield",
            contacts=[],
            sender=SENDER,
            summary=_summary("processed"),
            error_file_path=None,
        )


def test_failure_email_for_operators() -> None:
    message = build_failure_email(
        operators=["data-eng@vantage.example"],
        sender=SENDER,
        district_code="D001",
        run_id="9f1c2e",
        upload_key="20260301T020000Z-1",
        error_text="Traceback (most recent call last):\n  ...\nOperationalError: server closed",
    )
    assert message["To"] == "data-eng@vantage.example"
    assert "FAILED" in message["Subject"]
    assert "D001" in message["Subject"]
    assert "9f1c2e" in message["Subject"]
    body = message.get_content()
    assert "Upload:     20260301T020000Z-1" in body
    assert "OperationalError: server closed" in body

    long = build_failure_email(
        operators=["ops@vantage.example"],
        sender=SENDER,
        district_code="D001",
        run_id="r",
        upload_key=None,
        error_text="y" * 100_000,
    ).get_content()
    assert "(none claimed)" in long
    assert len(long) < 25_000


def test_the_email_goes_through_smtp_unchanged(smtp_server: LoopbackSmtpServer) -> None:
    message = _email("partially_processed")
    SmtpResource(port=smtp_server.port, sender=SENDER).send(message)
    received = smtp_server.received[0]
    assert set(received.rcpt_tos) == set(CONTACTS)
    assert received.message["Subject"] == message["Subject"]
    assert received.message.get_content() == message.get_content()
