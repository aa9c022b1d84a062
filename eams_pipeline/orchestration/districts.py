"""The districts the pipeline serves, as master data in the database describes them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from eams_pipeline.io.sftp import SftpSettings

_SELECT = """SELECT code, name, timezone, contacts, process_at, sftp_host, sftp_port,
                    sftp_username, sftp_password_env, sftp_private_key_file, sftp_host_key,
                    sftp_root
             FROM districts"""


@dataclass(frozen=True)
class District:
    code: str
    name: str
    timezone: str
    contacts: tuple[str, ...]
    process_at: dt.time | None  # None: process as soon as the file has settled
    sftp: SftpSettings | None  # None: no SFTP account configured

    @property
    def sftp_root(self) -> str:
        return (self.sftp.root if self.sftp else None) or "/"


def _district(r: tuple) -> District:
    code, name, timezone, contacts, process_at = r[:5]
    host, port, username, password_env, key_file, host_key, root = r[5:]
    sftp = None
    if host and username:
        sftp = SftpSettings(
            host=host,
            port=int(port),
            username=username,
            host_key=host_key or "",
            root=root or "/",
            password_env=password_env,
            private_key_file=key_file,
        )
    return District(
        code=code,
        name=name,
        timezone=timezone or "UTC",
        contacts=tuple(contacts or ()),
        process_at=process_at,
        sftp=sftp,
    )


def list_districts(conn: psycopg.Connection) -> list[District]:
    return [_district(r) for r in conn.execute(_SELECT + " ORDER BY code").fetchall()]


def get_district(conn: psycopg.Connection, code: str) -> District | None:
    r = conn.execute(_SELECT + " WHERE code = %s", (code,)).fetchone()
    return _district(r) if r else None
