"""Every Dagster resource of the code location, thin wrappers over the adapters.

    db          the MY Access database (psycopg)            eams_pipeline.db
    sftp        the districts' SFTP accounts (paramiko)     eams_pipeline.io.sftp
    smtp        the mail relay                              eams_pipeline.io.smtp
    archive     the encrypted archive of raw uploads        eams_pipeline.io.archive
    engine      the fingerprint secret and password hasher  eams_pipeline.services.process
    upload_ref  the upload a run of upload_job processes    run config, given at launch

:func:`default_resources` wires them from the environment (``eams_pipeline.config``); the
engine, the archive and the mail relay are built by ``eams_pipeline.services.wiring``, as
the CLI builds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage

import dagster as dg
import psycopg
from pydantic import Field

from eams_pipeline import config
from eams_pipeline.core.master_data import SftpAccount
from eams_pipeline.core.names import BadUploadKey, UploadRef
from eams_pipeline.db.connection import connect
from eams_pipeline.io.archive import Archive
from eams_pipeline.io.sftp import SftpConnector, SftpSession, shared_pool
from eams_pipeline.io.smtp import send_email
from eams_pipeline.orchestration.partitions import UPLOAD_RESOURCE
from eams_pipeline.services import wiring
from eams_pipeline.services.process import Engine


class DatabaseResource(dg.ConfigurableResource):
    """The MY Access database; ``url`` defaults to EAMS_DATABASE_URL at connection time."""

    url: str | None = None

    def connect(self) -> psycopg.Connection:
        # db.connection: a failure's message never holds the URL's password
        return connect(self.url)


class ArchiveResource(dg.ConfigurableResource):
    """The encrypted archive of raw uploads (EAMS_ARCHIVE_DIR, EAMS_ARCHIVE_KEY[_FILE]).

    ``key_env`` names the environment variable holding the Fernet key(s); the key itself
    never is resource config.
    """

    directory: str | None = None
    key_env: str = config.ARCHIVE_KEY_ENV

    def get(self) -> Archive:
        return wiring.archive(self.directory, self.key_env)


class EngineResource(dg.ConfigurableResource):
    """The server secret keying password fingerprints (EAMS_SECRET_KEY[_FILE]), the one
    before its last rotation (EAMS_SECRET_KEY_PREVIOUS[_FILE], optional) and the argon2id
    settings (EAMS_ARGON2_*, EAMS_HASH_WORKERS), read when a run needs them (and their
    format checked when the code location loads: default_resources).

    ``secret_key_env`` and ``previous_secret_key_env`` name the environment variables
    holding the secrets; a secret itself never is resource config."""

    secret_key_env: str = config.SECRET_KEY_ENV
    previous_secret_key_env: str = config.PREVIOUS_SECRET_KEY_ENV

    def check(self) -> None:
        """The secrets are set as documented, else ConfigError naming the variable."""
        config.check_secret_keys(self.secret_key_env, self.previous_secret_key_env)

    def get(self) -> Engine:
        return wiring.engine(self.secret_key_env, self.previous_secret_key_env)


class SftpResource(dg.ConfigurableResource):
    """Opens SFTP sessions on a district's account (see :class:`SftpConnector`).

    Connections are reused within the process (:class:`eams_pipeline.io.sftp.SftpPool`): a
    district sensor's next tick, or the next step of a run, takes the connection the last
    one left open if it was idle less than ``idle_timeout_seconds``
    (EAMS_SFTP_IDLE_SECONDS when unset; 0 closes every connection after use).
    """

    # the connector's own defaults (io.sftp)
    connect_timeout_seconds: float = SftpConnector.connect_timeout_seconds
    banner_timeout_seconds: float = SftpConnector.banner_timeout_seconds
    auth_timeout_seconds: float = SftpConnector.auth_timeout_seconds
    operation_timeout_seconds: float = SftpConnector.operation_timeout_seconds
    connect_attempts: int = SftpConnector.connect_attempts
    retry_wait_seconds: float = SftpConnector.retry_wait_seconds
    idle_timeout_seconds: float | None = None

    def connector(self) -> SftpConnector:
        return SftpConnector(**_fields_of(self, SftpConnector))

    @contextmanager
    def session(self, account: SftpAccount) -> Iterator[SftpSession]:
        """A pooled connection (or a new one: pinned host key verified, authenticated)."""
        idle = self.idle_timeout_seconds
        if idle is None:
            idle = config.sftp_idle_seconds()
        if idle <= 0:
            with self.connector().session(account) as session:
                yield session
            return
        with shared_pool(self.connector(), idle).session(account) as session:
            yield session


class SmtpResource(dg.ConfigurableResource):
    """An SMTP relay. ``security`` is ``none``, ``starttls`` or ``ssl`` (implicit TLS); the
    password is in the environment variable named by ``password_env``."""

    host: str = config.SmtpSettings.host
    port: int = config.SmtpSettings.port
    security: str = config.SmtpSettings.security
    username: str | None = None
    password_env: str | None = None
    sender: str = config.SmtpSettings.sender
    timeout_seconds: float = config.SmtpSettings.timeout_seconds
    ca_file: str | None = None

    def settings(self) -> config.SmtpSettings:
        return config.SmtpSettings(**_fields_of(self, config.SmtpSettings))

    def send(self, message: EmailMessage) -> None:
        send_email(self.settings(), message)


class UploadResource(dg.ConfigurableResource):
    """The upload a run of ``upload_job`` processes, given at launch: run config
    ``resources: {upload_ref: {config: {key: D001-20260114T020000123456Z}}}``. The sensors and
    ``reprocess_uploads`` set it; a re-execution keeps its parent's run config."""

    key: str = Field(
        description="The upload this run processes, e.g. D001-20260114T020000123456Z "
        "(its district is the run's partition)."
    )

    def ref(self) -> UploadRef:
        try:
            return UploadRef.parse(self.key)
        except BadUploadKey as exc:
            raise dg.Failure(
                f"run config resources.{UPLOAD_RESOURCE}.config.key: {exc}", allow_retries=False
            ) from exc


def smtp_resource_from_env() -> SmtpResource:
    """An :class:`SmtpResource` from ``EAMS_SMTP_*`` and ``EAMS_MAIL_FROM``."""
    return SmtpResource(**dataclasses.asdict(wiring.mail_relay()))


def _fields_of(resource: dg.ConfigurableResource, target: type) -> dict[str, object]:
    """The resource's values of the dataclass ``target``'s fields (same names)."""
    return {f.name: getattr(resource, f.name) for f in dataclasses.fields(target)}


def default_resources() -> dict[str, object]:
    """The resources of the code location, configured from the environment. A malformed
    secret key fails here, when the code location loads, not in the first run."""
    engine = EngineResource()
    engine.check()
    return {
        "db": DatabaseResource(),
        "sftp": SftpResource(),
        "smtp": smtp_resource_from_env(),
        "archive": ArchiveResource(),
        "engine": engine,
        UPLOAD_RESOURCE: UploadResource.configure_at_launch(),
    }
