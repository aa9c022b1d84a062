"""A district's licenses as its emails show them, and when its Enterprise order runs low.

Pure: figures in, decisions out (the database's figures come from db.export, the one
query of `eams export licenses`; services.license_alerts sends the alert).

- **Every outcome email** lists each order of the district: in use, total, available.
- **Running low**: the Enterprise order has fewer available licenses than the district's
  ``low_licenses`` (master data, a count; default 5% of the order's size rounded up, at
  least 1: the fleet status's ``licenses_low`` rule). ``low_licenses: 0`` turns the
  threshold off.
- **An upload with NO_LICENSE_AVAILABLE rows** always alerts, whatever the figures: students
  were refused for want of a license.
- **How often**, as the other district alerts (core.alert_rules): at most one alert per
  district and local day (``district_alerts`` kind ``licenses_low``, subject: the
  district's local date), except that every upload with NO_LICENSE_AVAILABLE rows alerts
  once (kind ``no_license_available``, subject: the upload key), even after that day's
  alert; it then counts as that day's alert.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from eams_pipeline.core.alert_rules import local_day

LICENSES_LOW = "licenses_low"  # district_alerts kind: the day's alert (subject: local date)
NO_LICENSE_AVAILABLE_ALERT = "no_license_available"  # kind: per upload (subject: its key)
DEFAULT_LOW_PCT = 5  # low_licenses when the master data leaves it out: % of the order
ENTERPRISE, REGULAR = "enterprise", "regular"  # an order's kind, as `eams export licenses`


@dataclass(frozen=True)
class OrderLicenses:
    """One order's licenses: its size (`total`) and the active students on it (`used`)."""

    number: str
    kind: str  # ENTERPRISE or REGULAR
    total: int
    used: int
    school_code: str | None = None  # a regular order's school (None: the district's)

    @property
    def available(self) -> int:
        return self.total - self.used

    @property
    def enterprise(self) -> bool:
        return self.kind == ENTERPRISE


def default_low_licenses(total: int) -> int:
    """5% of the order's size, rounded up, at least 1: an order is low when fewer than
    this are available (for a whole count, `available < ceil(x)` is `available < x`)."""
    return max(1, -(-total * DEFAULT_LOW_PCT // 100))


def low_threshold(total: int, low_licenses: int | None) -> int:
    """Below how many available licenses the Enterprise order is running low."""
    return default_low_licenses(total) if low_licenses is None else low_licenses


@dataclass(frozen=True)
class LicensesLow:
    """The alert due: which order, its figures, why, and how it is recorded."""

    order: OrderLicenses  # the Enterprise order
    threshold: int  # low_licenses in force
    no_license_rows: int  # the upload's rows refused NO_LICENSE_AVAILABLE (0: none)
    kind: str  # LICENSES_LOW or NO_LICENSE_AVAILABLE_ALERT
    subject: str  # the local date, or the upload key
    day: str  # the district's local date: recorded as the day's alert in either case


def licenses_low(
    orders: Sequence[OrderLicenses],
    *,
    low_licenses: int | None,
    no_license_rows: int,
    upload_key: str | None,
    now: dt.datetime,
    timezone: str,
) -> LicensesLow | None:
    """The low-licenses alert the district is due now, if any (see the module docstring).
    ``orders``: the district's orders as the database has them now."""
    enterprise = next((o for o in orders if o.enterprise), None)
    if enterprise is None:
        return None
    threshold = low_threshold(enterprise.total, low_licenses)
    day = local_day(now, timezone)
    if no_license_rows > 0 and upload_key:
        return LicensesLow(
            enterprise, threshold, no_license_rows, NO_LICENSE_AVAILABLE_ALERT, upload_key, day
        )
    if enterprise.available < threshold:
        return LicensesLow(enterprise, threshold, 0, LICENSES_LOW, day, day)
    return None


def license_line(order: OrderLicenses) -> str:
    """One order as the emails show it: `ENT-D1 (Enterprise): 96 in use, 100 total, 4
    available`."""
    if order.enterprise:
        what = "Enterprise"
    elif order.school_code:
        what = f"regular, school {order.school_code}"
    else:
        what = "regular"
    return (
        f"{order.number} ({what}): {order.used} in use, {order.total} total, "
        f"{order.available} available"
    )
