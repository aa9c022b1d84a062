"""The districts the pipeline serves, as master data in the database describes them.

`lock_district` takes a row lock on the district: every writer of a district's students
(an upload, master data) holds it, so one district's uploads never apply at the same time
(a dry run, e.g. a check drop's, reads without it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from eams_pipeline.core.guard import parse_thresholds
from eams_pipeline.core.master_data import SftpAccount
from eams_pipeline.core.pauses import Pause, parse_stored


class UnknownDistrict(LookupError):
    pass


@dataclass(frozen=True)
class District:
    district_id: int
    code: str
    name: str
    timezone: str
    contacts: tuple[str, ...]
    process_at: dt.time | None  # None: process as soon as the file has settled
    sftp: SftpAccount | None  # None: no SFTP account configured
    enterprise_order_id: int | None
    holding_bin_school_id: int | None
    guard: dict[str, float | None] | None = None  # the change guard's limits (core.guard)
    mode: str = "incremental"  # or "full_roster"
    encoding: str = "utf-8"  # how the district's files are read (master data `encoding`)
    grades: tuple[str, ...] | None = None  # participating grades; None: all
    expected_by: dt.time | None = None  # local time the nightly file is due; None: no alert
    failure_contacts: tuple[str, ...] = ()  # also told of rejected or held files
    # local date ranges without uploads (core.pauses), in date order
    pauses: tuple[Pause, ...] = ()
    low_licenses: int | None = None  # alerted below this many available (None: 5% default)
    account_managers: tuple[str, ...] = ()  # in copy of the low-licenses alert

    @property
    def failure_recipients(self) -> tuple[str, ...]:
        """Who hears of a rejected or held file: the contacts, then the failure contacts."""
        return tuple(dict.fromkeys((*self.contacts, *self.failure_contacts)))

    @property
    def sftp_root(self) -> str:
        return (self.sftp.root if self.sftp else None) or "/"


_SELECT = """SELECT district_id, code, name, timezone, contacts, process_at,
                    enterprise_order_id, holding_bin_school_id,
                    sftp_host, sftp_port, sftp_username, sftp_password_env,
                    sftp_private_key_file, sftp_host_key, sftp_root,
                    encoding, grades, expected_by, failure_contacts, guard, mode,
                    pauses, low_licenses, account_managers
             FROM districts"""


def _from_row(r: tuple) -> District:
    district_id, code, name, timezone, contacts, process_at, ent_order, bin_school = r[:8]
    host, port, username, password_env, key_file, host_key, root = r[8:15]
    encoding, grades, expected_by, failure_contacts = r[15:19]
    guard, mode, pauses, low_licenses, account_managers = r[19:24]
    sftp = None
    if host and username:
        sftp = SftpAccount(
            host=host,
            port=int(port),
            username=username,
            host_key=host_key or "",
            root=root or "/",
            password_env=password_env,
            private_key_file=key_file,
        )
    return District(
        district_id=district_id,
        code=code,
        name=name,
        timezone=timezone or "UTC",
        contacts=tuple(contacts or ()),
        process_at=process_at,
        sftp=sftp,
        enterprise_order_id=ent_order,
        holding_bin_school_id=bin_school,
        encoding=encoding or "utf-8",
        grades=tuple(grades) if grades is not None else None,
        expected_by=expected_by,
        failure_contacts=tuple(failure_contacts or ()),
        # stored resolved at `eams setup load`; NULL (never loaded since 007): the defaults
        guard=guard if guard is not None else parse_thresholds(None),
        mode=mode or "incremental",
        pauses=parse_stored(pauses),
        low_licenses=low_licenses,
        account_managers=tuple(account_managers or ()),
    )


def list_districts(conn: psycopg.Connection) -> list[District]:
    return [_from_row(r) for r in conn.execute(_SELECT + " ORDER BY code").fetchall()]


def district_codes(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT code FROM districts ORDER BY code").fetchall()]


def get_district(conn: psycopg.Connection, code: str) -> District | None:
    r = conn.execute(_SELECT + " WHERE code = %s", (code,)).fetchone()
    return _from_row(r) if r else None


def lock_district(conn: psycopg.Connection, code: str, *, lock: bool = True) -> District:
    """The district, row-locked until the transaction ends (``lock=False``: read only, for a
    dry run, which writes nothing and must not keep the district's uploads waiting).

    FOR NO KEY UPDATE: two uploads of the district (and master data, FOR UPDATE) exclude
    each other, while rows that merely reference the district (a check drop's record, an
    upload request, an alert: their foreign key's KEY SHARE) are not kept waiting."""
    query = _SELECT + " WHERE code = %s" + (" FOR NO KEY UPDATE" if lock else "")
    r = conn.execute(query, (code,)).fetchone()
    if r is None:
        raise UnknownDistrict(f"unknown district {code!r}: load it with `eams setup load` first")
    district = _from_row(r)
    if district.enterprise_order_id is None or district.holding_bin_school_id is None:
        raise UnknownDistrict(f"district {code} has no enterprise order or holding bin school")
    return district


def district_code(conn: psycopg.Connection, district_id: int) -> str:
    """The code of the district with this key."""
    return conn.execute(
        "SELECT code FROM districts WHERE district_id = %s", (district_id,)
    ).fetchone()[0]
