"""Dagster resources: the MY Access database and the encrypted archive.

SFTP and SMTP are :class:`eams_pipeline.io.sftp.SftpResource` and
:class:`eams_pipeline.io.smtp.SmtpResource`; :func:`default_resources` wires all four from
the environment.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg

from eams_pipeline.config import ConfigError, database_url, env_secret, env_str
from eams_pipeline.io.archive import DEFAULT_ARCHIVE_DIR, Archive
from eams_pipeline.io.sftp import SftpResource
from eams_pipeline.io.smtp import smtp_resource_from_env


class DatabaseResource(dg.ConfigurableResource):
    """The MY Access database; ``url`` defaults to EAMS_DATABASE_URL at connection time."""

    url: str | None = None

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url or database_url())


class ArchiveResource(dg.ConfigurableResource):
    """The encrypted archive of raw uploads (EAMS_ARCHIVE_DIR, EAMS_ARCHIVE_KEY[_FILE]).

    ``key_env`` names the environment variable holding the Fernet key(s); the key itself
    never is resource config.
    """

    directory: str | None = None
    key_env: str = "EAMS_ARCHIVE_KEY"

    def get(self) -> Archive:
        keys = env_secret(self.key_env)
        if not keys:
            raise ConfigError(
                f"{self.key_env} (or {self.key_env}_FILE) is not set: it encrypts the archive "
                "copy of every upload"
            )
        directory = self.directory or env_str("EAMS_ARCHIVE_DIR", DEFAULT_ARCHIVE_DIR)
        return Archive(Path(directory or DEFAULT_ARCHIVE_DIR), keys)


def default_resources() -> dict[str, object]:
    """The resources of the code location, configured from the environment."""
    return {
        "db": DatabaseResource(),
        "sftp": SftpResource(),
        "smtp": smtp_resource_from_env(),
        "archive": ArchiveResource(),
    }
