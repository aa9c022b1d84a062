"""What the district reads (pure): one line per order with its licenses, the low-licenses
rule, the template header of a rejected file on one line of its own, the upload key beside
the upload id, and a closed school reported as closed."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from eams_pipeline.core.errors import concat_errors
from eams_pipeline.core.fingerprints import fingerprint_key
from eams_pipeline.core.licenses import (
    LICENSES_LOW,
    NO_LICENSE_AVAILABLE_ALERT,
    OrderLicenses,
    default_low_licenses,
    licenses_low,
)
from eams_pipeline.core.notifications import build_licenses_low_email, build_upload_email
from eams_pipeline.core.plan import DistrictSnapshot, make_plan, match_rows
from eams_pipeline.core.reading import FileRejected, read_upload
from eams_pipeline.core.template import HEADER
from eams_pipeline.core.validation import normalise, validate_rows
from eams_pipeline_tests.builders import csv_bytes, row

KEY = "D001-20260114T020000123456Z"
HEADER_LINE = ",".join(HEADER)
NOON = dt.datetime(2026, 1, 14, 18, 0, tzinfo=dt.UTC)  # 12:00 in Chicago
ENTERPRISE = OrderLicenses("ENT-2026-D001", "enterprise", total=5000, used=4990)
REGULAR = OrderLicenses("REG-101", "regular", total=20, used=12, school_code="101")


def _summary(status: str, **counts: object) -> dict[str, object]:
    return {
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
    } | counts


def _email(status: str, file_error: str | None = None, **kw: object):
    licenses = kw.pop("licenses", (ENTERPRISE, REGULAR))
    return build_upload_email(
        district_code="D001",
        district_name="Springfield Unified School District",
        contacts=["sis@d001.example.org"],
        sender="eams@vantage.example",
        summary=_summary(status, **kw),
        error_file_path="/d001/errors/students_errors_42.csv",
        file_error=file_error,
        upload_key=KEY,
        licenses=licenses,
    )


# -- licenses in every outcome email ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "file_error", "counts"),
    [
        ("processed", None, {"errors": 0, "added": 3, "error_codes": {}}),
        ("partially_processed", None, {}),
        ("rejected", "FILE_EMPTY: The file is empty.", {"rows": 0, "added": 0, "errors": 0}),
        ("held", None, {}),
    ],
)
def test_every_outcome_email_has_one_license_line_per_order(
    status: str, file_error: str | None, counts: dict
) -> None:
    body = _email(status, file_error, **counts).get_content()
    lines = body.splitlines()
    at = lines.index("Licenses now:")
    assert lines[at + 1 : at + 3] == [
        "  ENT-2026-D001 (Enterprise): 4990 in use, 5000 total, 10 available",
        "  REG-101 (regular, school 101): 12 in use, 20 total, 8 available",
    ]
    assert lines[at + 3] == ""  # nothing else in the block


def test_a_long_order_number_keeps_its_line_whole() -> None:
    number = "ENTERPRISE-ORDER-" + "X" * 80
    order = OrderLicenses(number, "enterprise", total=10, used=3)
    body = _email("processed", errors=0, error_codes={}, licenses=[order]).get_content()
    assert f"  {number} (Enterprise): 3 in use, 10 total, 7 available" in body.splitlines()


def test_no_license_block_without_orders() -> None:
    assert "Licenses" not in _email("processed", licenses=()).get_content()


# -- the upload key beside the upload id ---------------------------------------------------


@pytest.mark.parametrize("status", ["processed", "partially_processed", "rejected", "held"])
def test_the_email_names_the_upload_key_beside_the_upload_id(status: str) -> None:
    message = _email(status, "FILE_EMPTY: The file is empty." if status == "rejected" else None)
    line = f"Upload key {KEY}, upload id 42."
    assert line in message.get_content().splitlines()
    assert KEY in message["Subject"] and "42" not in message["Subject"]


# -- a rejected file's expected header on one line ------------------------------------------


def _rejection(data: bytes) -> str:
    with pytest.raises(FileRejected) as caught:
        read_upload(data)
    return f"{caught.value.code}: {caught.value.message}"


@pytest.mark.parametrize(
    "first_line",
    [
        b"School Code;Student ID;Last Name;First Name;Middle Name;Grade;Username;Password",
        b"School Code,Student ID,Last Name,First Name,Middle,Grade,Username,Password,Email,"
        b"Class,Status",
        b"101,S1,Smith,Ann,,5,asmith,secret-pw,,,A",  # the header left out
        b"",
    ],
)
def test_a_rejected_files_expected_header_stands_on_one_line(first_line: bytes) -> None:
    error = _rejection(first_line + b"\r\n101,S1,Smith,Ann,,5,asmith,secret-pw,,,A\r\n")
    assert error.startswith("HEADER_MISMATCH") and HEADER_LINE in error
    body = _email("rejected", error, rows=1, added=0, errors=1).get_content()
    lines = body.splitlines()
    assert f"    {HEADER_LINE}" in lines  # whole, unwrapped, indented under the error
    block = body.split("Error:\n", 1)[1].split("\n\n", 1)[0]
    # no word of the message is lost or cut (the ` | ` between its parts became lines)
    assert [w for w in block.split() if w != "|"] == [w for w in error.split() if w != "|"]
    # the prose is wrapped; only the quoted headers (indented by 4) are longer
    assert all(len(line) <= 76 for line in block.splitlines() if not line.startswith("    "))


# -- the low-licenses rule ------------------------------------------------------------------


def test_default_low_licenses_is_five_percent_rounded_up_at_least_one() -> None:
    assert [default_low_licenses(n) for n in (0, 1, 19, 20, 21, 100, 5000)] == [
        1,
        1,
        1,
        1,
        2,
        5,
        250,
    ]


def _low(used: int, low_licenses: int | None = None, no_license_rows: int = 0):
    order = OrderLicenses("ENT", "enterprise", total=100, used=used)
    return licenses_low(
        [REGULAR, order],
        low_licenses=low_licenses,
        no_license_rows=no_license_rows,
        upload_key=KEY,
        now=NOON,
        timezone="America/Chicago",
    )


def test_low_below_the_threshold_once_a_local_day() -> None:
    assert _low(used=95) is None  # 5 available: not below 5% of 100
    low = _low(used=96)  # 4 available
    assert low is not None and low.threshold == 5 and low.order.available == 4
    assert (low.kind, low.subject, low.day) == (LICENSES_LOW, "2026-01-14", "2026-01-14")
    late = licenses_low(
        [low.order],
        low_licenses=None,
        no_license_rows=0,
        upload_key=KEY,
        now=dt.datetime(2026, 1, 15, 5, 59, tzinfo=dt.UTC),  # 23:59 in Chicago
        timezone="America/Chicago",
    )
    assert late is not None and late.subject == "2026-01-14"


def test_the_districts_low_licenses_replaces_the_default() -> None:
    assert _low(used=80, low_licenses=25) is not None  # 20 available < 25
    assert _low(used=70, low_licenses=25) is None
    assert _low(used=100, low_licenses=0) is None  # 0: no alert by count


def test_no_license_available_rows_always_alert_once_per_upload() -> None:
    for low_licenses in (None, 0):
        low = _low(used=10, low_licenses=low_licenses, no_license_rows=3)
        assert low is not None and low.no_license_rows == 3
        assert (low.kind, low.subject, low.day) == (NO_LICENSE_AVAILABLE_ALERT, KEY, "2026-01-14")


def test_the_alert_email_names_the_order_and_its_figures() -> None:
    low = _low(used=96)
    message = build_licenses_low_email(
        district_code="D001",
        district_name="Springfield",
        contacts=["sis@d001.example.org"],
        account_managers=["am@vantage.example"],
        sender="eams@vantage.example",
        low=low,
    )
    assert message["Subject"] == (
        "eAMS licenses running low: Springfield (D001), order ENT: 4 of 100 available"
    )
    assert message["To"] == "sis@d001.example.org" and message["Cc"] == "am@vantage.example"
    body = message.get_content()
    assert "  ENT (Enterprise): 96 in use, 100 total, 4 available" in body.splitlines()
    assert "fewer than 5 are available" in " ".join(body.split())
    refused = build_licenses_low_email(
        district_code="D001",
        district_name="Springfield",
        contacts=[],
        account_managers=["am@vantage.example"],
        sender="eams@vantage.example",
        low=_low(used=10, no_license_rows=1),
        upload_key=KEY,
    )
    assert refused["To"] == "am@vantage.example" and refused["Cc"] is None
    text = " ".join(refused.get_content().split())
    assert f"Upload {KEY} of Springfield (D001) had 1 row refused with NO_LICENSE_AVAILABLE" in text


# -- a closed school is reported as closed ---------------------------------------------------


def _snapshot() -> DistrictSnapshot:
    schools = pd.DataFrame(
        {
            "code": ["101", "900", "D1-HB"],
            "school_id": [10, 12, 11],
            "active": [True, False, True],
            "holding_bin": [False, False, True],
        }
    )
    students = pd.DataFrame(
        {
            "student_id": pd.Series([], dtype="str"),
            "student_pk": pd.Series([], dtype="Int64"),
            "status": pd.Series([], dtype="str"),
            "order_id": pd.Series([], dtype="Int64"),
            "school_id": pd.Series([], dtype="Int64"),
            "data_hash": pd.Series([], dtype="Int64"),
            "password_fingerprint": pd.Series([], dtype="Int64"),
            "username_lower": pd.Series([], dtype="str"),
        }
    )
    return DistrictSnapshot(
        district_id=1,
        enterprise_order_id=1,
        bin_available=10,
        schools=schools,
        students=students,
        taken_usernames=pd.DataFrame(
            {"username_lower": [], "district_id": [], "student_id": []}
        ).astype({"username_lower": "str", "district_id": "int64", "student_id": "str"}),
    )


def test_a_closed_school_is_reported_as_closed_not_as_unknown() -> None:
    rows = [
        row("S1", school_code="900"),
        row("S2", school_code="777"),
        row("S3", school_code="D1-HB"),
        row("S4", "X", school_code="900"),
    ]
    parsed = read_upload(csv_bytes(rows))
    errors = concat_errors([parsed.malformed, validate_rows(parsed.rows)])
    snap, frame = _snapshot(), normalise(parsed.rows)
    match = match_rows(frame, snap.students)
    plan = make_plan(frame, errors, parsed.total_rows, snap, match, fingerprint_key(b"k"))
    found = plan.errors[plan.errors["code"] == "SCHOOL_NOT_FOUND"]
    messages = dict(zip(found["student_id"], found["message"], strict=True))
    assert messages == {
        "S1": "School Code 900 is a closed school of this district: only a D row may name it "
        "(to deactivate its students).",
        "S2": "School Code 777 is not a participating school of this district.",
        "S3": "School Code D1-HB is the Enterprise Holding Bin School, which holds the free "
        "licenses: no student is placed there.",
        "S4": "School Code 900 is a closed school of this district: only a D row may name it "
        "(to deactivate its students).",
    }
    assert "not a participating" not in messages["S1"]


# -- the fleet status follows the district's low_licenses ------------------------------------


def test_the_fleet_flags_licenses_low_by_the_districts_low_licenses() -> None:
    from eams_pipeline.core.fleet_ranking import DistrictFacts, FleetState, district_attention

    def low(used: int, low_licenses: int | None) -> bool:
        facts = DistrictFacts(
            code="D1",
            name="District D1",
            licenses=100,
            licenses_used=used,
            enterprise_order="ENT",
            low_licenses=low_licenses,
        )
        return FleetState.LICENSES_LOW in [a.state for a in district_attention(facts, NOON)]

    assert [low(used, None) for used in (95, 96)] == [False, True]  # the default: 5%
    assert [low(used, 20) for used in (80, 81)] == [False, True]  # under the district's 20
    assert [low(used, 0) for used in (99, 100)] == [False, False]  # 0: never by count
    # the fleet and the alert agree
    for used in range(90, 101):
        for setting in (None, 0, 3, 20):
            alert = _low(used=used, low_licenses=setting)
            assert low(used, setting) == (alert is not None), (used, setting)


def test_the_alert_without_a_threshold_does_not_speak_of_fewer_than_zero() -> None:
    message = build_licenses_low_email(
        district_code="D001",
        district_name="Springfield",
        contacts=["sis@d001.example.org"],
        account_managers=[],
        sender="eams@vantage.example",
        low=_low(used=10, low_licenses=0, no_license_rows=2),
        upload_key=KEY,
    )
    text = " ".join(message.get_content().split())
    assert "fewer than 0" not in text
    assert "You are not alerted by the number of available licenses (low_licenses: 0)" in text
    assert "had 2 rows refused with NO_LICENSE_AVAILABLE" in text
