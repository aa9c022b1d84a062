"""Emails that read right: the upload key, no error file on success, no word
cut, consistent counts, failure contacts for rejected files (the last on the real servers)."""

from __future__ import annotations

import re

import dagster as dg

from eams_pipeline.core.notifications import COUNT_LABELS, build_upload_email
from eams_pipeline.core.outcome import OUTCOMES
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import Pipeline, clean_file, district, upload_key

KEY = "D001-20260114T020000123456Z"


def _email(status: str, file_error: str | None = None, **summary: object):
    base = {
        "upload_id": 42,
        "status": status,
        "rows": 3,
        "added": 2,
        "activated": 0,
        "deactivated": 0,
        "updated": 0,
        "unchanged": 0,
        "errors": 1,
        "error_codes": {"INVALID_GRADE": 1},
    } | summary
    return build_upload_email(
        district_code="D001",
        district_name="Springfield Unified School District",
        contacts=["sis@d001.example.org"],
        sender="eams@vantage.example",
        summary=base,
        error_file_path="/d001/errors/students_errors_42.csv",
        file_error=file_error,
        upload_key=KEY,
    )


def test_the_upload_key_is_what_the_email_quotes() -> None:
    for message in (
        _email("processed", errors=0, added=3, error_codes={}),
        _email("partially_processed"),
        _email("rejected", "FILE_EMPTY: The file is empty.", rows=0, added=0, errors=0),
    ):
        assert f"upload {KEY}" in message["Subject"]
        assert KEY in message.get_content()
        assert "upload 42" not in message["Subject"] + message.get_content()


def test_a_successful_upload_does_not_mention_an_error_file() -> None:
    body = _email("processed", errors=0, added=3, error_codes={}).get_content().lower()
    assert "error file" not in body and "errors/" not in body


def test_a_long_message_is_never_cut_inside_a_word() -> None:
    header = (
        "School Code,Student ID,Last Name,First Name,Middle Name,Grade,Username,Password,"
        "Email,Class Name,Status"
    )
    error = f"HEADER_MISMATCH: expected header {header}; found {header.replace(',', ';')}"
    body = _email("rejected", error, rows=0, added=0, errors=0).get_content()
    block = body.split("Error:\n", 1)[1].split("\n\n", 1)[0]
    words = [w for line in block.splitlines() for w in line.split()]
    assert words == error.split()  # every word whole, in order
    assert "[...]" not in block


def test_counts_are_in_one_order_everywhere() -> None:
    assert tuple(key for key, _ in COUNT_LABELS) == OUTCOMES
    body = _email("partially_processed").get_content()
    labels = re.findall(r"^  (\S.*?)\s{2,}\d+$", body, flags=re.M)
    expected = ["Rows in the file", *(label for _, label in COUNT_LABELS)]
    assert labels[: len(expected)] == expected


def test_a_rejected_file_goes_to_the_failure_contacts_too(
    pipeline: Pipeline, instance: dg.DagsterInstance
) -> None:
    failures = ["sis-vendor@d001.example.org"]
    builders.load(pipeline.conn, district("D001", pipeline.sftp) | {"failure_contacts": failures})
    pipeline.conn.commit()
    request, rejected = pipeline.sensor_run(instance, "D001", b"not,a,students,file\n1,2,3,4\n")
    assert rejected.success
    [mail] = pipeline.smtp.wait_for(1)
    assert "FAILED" in mail["Subject"] and upload_key(request) in mail["Subject"]
    assert mail["To"] == (
        "sis-admin@d001.example.org, it@d001.example.org, sis-vendor@d001.example.org"
    )

    pipeline.clock.advance(3600)
    _, clean = pipeline.sensor_run(instance, "D001", clean_file())
    assert clean.success
    mails = pipeline.smtp.wait_for(2)
    assert "SUCCESSFUL" in mails[1]["Subject"]
    assert mails[1]["To"] == "sis-admin@d001.example.org, it@d001.example.org"
