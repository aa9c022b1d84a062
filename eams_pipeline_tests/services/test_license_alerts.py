"""The low-licenses alert use case on the real database and the loopback SMTP server: from
the database's figures, once a local day, every upload with NO_LICENSE_AVAILABLE rows once,
to the contacts with the account managers (else the operators) in copy; recorded only
when sent."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from email.message import EmailMessage

import psycopg
import pytest

from eams_pipeline import config
from eams_pipeline.db import uploads as db_uploads
from eams_pipeline.db.districts import get_district
from eams_pipeline.devtools.smtp_server import LoopbackSmtpServer
from eams_pipeline.io.smtp import send_email
from eams_pipeline.services.license_alerts import LicenseAlert, alert_if_licenses_low
from eams_pipeline_tests.builders import district_doc, existing_student, load, row, run

NOON = dt.datetime(2026, 1, 14, 18, 0, tzinfo=dt.UTC)  # 12:00 in Chicago
NEXT_DAY = NOON + dt.timedelta(days=1)
OPERATORS = ["ops@eams.example.com"]
MANAGER = "am@vantage.example"


@dataclass
class Relay:
    """The mail relay as the use case sees it (in Dagster: the SMTP resource)."""

    settings: config.SmtpSettings

    @property
    def sender(self) -> str:
        return self.settings.sender

    def send(self, message: EmailMessage) -> None:
        send_email(self.settings, message)


class DownRelay(Relay):
    def send(self, message: EmailMessage) -> None:
        raise ConnectionRefusedError("the relay is down")


def _district(conn: psycopg.Connection, *, licenses: int, active: int, **keys: object) -> None:
    existing = [existing_student(f"E{i}") for i in range(active)]
    load(conn, district_doc(licenses=licenses, existing=existing) | keys)
    conn.commit()


def _upload(conn: psycopg.Connection, key: str, rows: list[dict]) -> db_uploads.UploadRow:
    run(conn, rows, key=key)
    conn.commit()
    upload = db_uploads.get_upload(conn, key)
    assert upload is not None
    return upload


def _check(
    conn: psycopg.Connection,
    smtp: LoopbackSmtpServer,
    upload: db_uploads.UploadRow,
    now: dt.datetime = NOON,
) -> LicenseAlert:
    district = get_district(conn, "D1")
    assert district is not None
    return alert_if_licenses_low(
        conn,
        district,
        upload,
        now=now,
        mailer=Relay(config.SmtpSettings(port=smtp.port)),
        operators=OPERATORS,
    )


def _recorded(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT kind, subject FROM district_alerts ORDER BY sent_at, kind, subject"
    ).fetchall()


def test_below_low_licenses_one_alert_a_local_day_with_the_account_managers(
    conn: psycopg.Connection, smtp_server: LoopbackSmtpServer
) -> None:
    _district(conn, licenses=10, active=5, low_licenses=5, account_managers=[MANAGER])
    upload = _upload(conn, "D1-k1", [row("N1")])  # 6 of 10 used: 4 available, under 5
    alert = _check(conn, smtp_server, upload)
    assert alert.sent
    [mail] = smtp_server.wait_for(1)
    assert mail["Subject"].strip() == (
        "eAMS licenses running low: District D1 (D1), order ENT-D1: 4 of 10 available"
    )
    assert (mail["To"], mail["Cc"]) == ("admin@d1.example.org", MANAGER)
    assert "  ENT-D1 (Enterprise): 6 in use, 10 total, 4 available" in mail.get_content()

    again = _check(conn, smtp_server, _upload(conn, "D1-k2", [row("N2")]))  # 3 available
    assert not again.sent and "already alerted" in again.note
    assert len(smtp_server.messages) == 1
    tomorrow = _check(conn, smtp_server, upload, now=NEXT_DAY)
    assert tomorrow.sent and len(smtp_server.wait_for(2)) == 2
    assert _recorded(conn) == [("licenses_low", "2026-01-14"), ("licenses_low", "2026-01-15")]


def test_enough_licenses_no_alert_and_the_operators_without_account_managers(
    conn: psycopg.Connection, smtp_server: LoopbackSmtpServer
) -> None:
    _district(conn, licenses=100, active=94)  # the default: under 5 (5% of 100)
    upload = _upload(conn, "D1-k1", [row("N1")])  # 95 used, 5 available
    alert = _check(conn, smtp_server, upload)
    assert not alert.sent and alert.note.startswith("licenses sufficient: ENT-D1")
    upload = _upload(conn, "D1-k2", [row("N2")])  # 4 available
    assert _check(conn, smtp_server, upload).sent
    [mail] = smtp_server.wait_for(1)
    assert (mail["To"], mail["Cc"]) == ("admin@d1.example.org", "ops@eams.example.com")


def test_no_license_available_rows_alert_per_upload_even_after_the_days_alert(
    conn: psycopg.Connection, smtp_server: LoopbackSmtpServer
) -> None:
    _district(conn, licenses=3, active=1, low_licenses=2)
    first = _upload(conn, "D1-k1", [row("N1")])  # 1 available, under 2: the day's alert
    assert _check(conn, smtp_server, first).sent
    short = _upload(conn, "D1-k2", [row("N2"), row("N3")])  # N3: NO_LICENSE_AVAILABLE
    assert short.error_codes == {"NO_LICENSE_AVAILABLE": 1}
    alert = _check(conn, smtp_server, short)
    assert alert.sent and "1 rows refused NO_LICENSE_AVAILABLE" in alert.note
    mails = smtp_server.wait_for(2)
    assert "had 1 row refused with NO_LICENSE_AVAILABLE" in " ".join(mails[1].get_content().split())
    assert not _check(conn, smtp_server, short).sent  # once per upload
    assert _check(conn, smtp_server, _upload(conn, "D1-k3", [row("N4")])).sent  # another one
    assert len(smtp_server.wait_for(3)) == 3
    assert _recorded(conn)[1:] == [
        ("no_license_available", "D1-k2"),
        ("no_license_available", "D1-k3"),
    ]


def test_no_license_available_rows_alert_with_the_threshold_off_and_count_for_the_day(
    conn: psycopg.Connection, smtp_server: LoopbackSmtpServer
) -> None:
    _district(conn, licenses=1, active=1, low_licenses=0)  # 0: no alert by count
    assert not _check(conn, smtp_server, _upload(conn, "D1-k1", [row("E0", password="")])).sent
    short = _upload(conn, "D1-k2", [row("N1")])
    assert _check(conn, smtp_server, short).sent
    assert _recorded(conn) == [("licenses_low", "2026-01-14"), ("no_license_available", "D1-k2")]


def test_an_alert_that_cannot_be_sent_is_not_recorded(
    conn: psycopg.Connection, smtp_server: LoopbackSmtpServer
) -> None:
    _district(conn, licenses=10, active=9, low_licenses=5)
    upload = _upload(conn, "D1-k1", [])  # a file with no change: 1 available
    district = get_district(conn, "D1")
    assert district is not None
    down = DownRelay(config.SmtpSettings(port=smtp_server.port))
    with pytest.raises(ConnectionRefusedError):
        alert_if_licenses_low(conn, district, upload, now=NOON, mailer=down, operators=[])
    assert _recorded(conn) == []
    assert _check(conn, smtp_server, upload).sent  # the next check sends it
