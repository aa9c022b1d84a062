"""The low-licenses alert: after an upload's outcome, from the database's figures (the rules
are core.licenses'). Sent to the district's contacts, its account managers in copy (master
data `account_managers`; none: the operators), and recorded in district_alerts in the
transaction that sends it, so that it goes out once (a day, or per upload for
NO_LICENSE_AVAILABLE rows) whatever re-runs, retries or shards do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from eams_pipeline.core.errors import ErrorCode
from eams_pipeline.core.licenses import LICENSES_LOW, license_line, licenses_low
from eams_pipeline.core.notifications import build_licenses_low_email
from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.db import district_alerts as db_alerts
from eams_pipeline.db.districts import District
from eams_pipeline.db.export import order_licenses
from eams_pipeline.db.uploads import UploadRow
from eams_pipeline.services.alerting import Mailer

# the statuses whose NO_LICENSE_AVAILABLE rows were planned against the district as it is
# (applied, or held with the figures an approval would apply); not a superseded file's
PLANNED = frozenset(
    {UploadStatus.PROCESSED, UploadStatus.PARTIALLY_PROCESSED, UploadStatus.HELD}
)


@dataclass(frozen=True)
class LicenseAlert:
    """What the check did: a line for the run's log and metadata, and whether it sent."""

    note: str
    sent: bool = False


def no_license_rows(upload: UploadRow) -> int:
    """The upload's rows refused NO_LICENSE_AVAILABLE (0 unless planned: see PLANNED)."""
    if upload.status not in PLANNED:
        return 0
    return int(upload.error_codes.get(ErrorCode.NO_LICENSE_AVAILABLE.value, 0))


def alert_if_licenses_low(
    conn: psycopg.Connection,
    district: District,
    upload: UploadRow,
    *,
    now: dt.datetime,
    mailer: Mailer,
    operators: Sequence[str],
) -> LicenseAlert:
    """Send the low-licenses alert the district is due after this upload, if any, once.

    ``conn`` must have no transaction open (the alert is recorded and sent in one of its
    own: when sending fails, nothing is recorded and the next upload's check tries again).
    Raises what ``mailer.send`` raises."""
    orders = order_licenses(conn, district.code)
    low = licenses_low(
        orders,
        low_licenses=district.low_licenses,
        no_license_rows=no_license_rows(upload),
        upload_key=upload.upload_key,
        now=now,
        timezone=district.timezone,
    )
    conn.rollback()  # end the read: the alert is recorded in a transaction of its own
    if low is None:
        enterprise = next((o for o in orders if o.enterprise), None)
        figures = license_line(enterprise) if enterprise else "no Enterprise order"
        return LicenseAlert(f"licenses sufficient: {figures}")
    text = f"LICENSES LOW: {license_line(low.order)}, alerted below {low.threshold}"
    if low.no_license_rows:
        text += f"; {low.no_license_rows} rows refused NO_LICENSE_AVAILABLE"
    managers = list(district.account_managers) or list(operators)
    if not district.contacts and not managers:
        return LicenseAlert(f"{text}; nobody to tell (no contacts, no account managers)")
    message = build_licenses_low_email(
        district_code=district.code,
        district_name=district.name,
        contacts=list(district.contacts),
        account_managers=managers,
        sender=mailer.sender,
        low=low,
        upload_key=upload.upload_key,
    )
    with conn.transaction():
        if not db_alerts.claim_alert(conn, district.district_id, low.kind, low.subject, text):
            return LicenseAlert(f"{text} (already alerted)")
        if low.kind != LICENSES_LOW:  # it is the day's alert as well
            db_alerts.record_alerts(conn, district.district_id, LICENSES_LOW, [low.day], text)
        mailer.send(message)
    recipients = message.get_all("To", []) + message.get_all("Cc", [])
    return LicenseAlert(f"{text}; emailed {', '.join(recipients)}", sent=True)
