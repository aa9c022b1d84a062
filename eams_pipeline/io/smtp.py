"""Sending email through an SMTP relay (smtplib).

Configuration comes from the environment (:func:`smtp_resource_from_env`) or directly as
Dagster resource config. The password is never part of the config: ``password_env`` names
the environment variable that holds it (``NAME_FILE`` pointing to a file also works).
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

import dagster as dg

from eams_pipeline.config import ConfigError, env_int, env_secret, env_str

SECURITY_MODES = ("none", "starttls", "ssl")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
DEFAULT_PASSWORD_ENV = "EAMS_SMTP_PASSWORD"


class SmtpResource(dg.ConfigurableResource):
    """An SMTP relay. ``security`` is ``none``, ``starttls`` or ``ssl`` (implicit TLS)."""

    host: str = "127.0.0.1"
    port: int = 25
    security: str = "none"
    username: str | None = None
    password_env: str | None = None
    sender: str = "eams-noreply@localhost"
    timeout_seconds: float = 30
    ca_file: str | None = None  # a private CA bundle to verify the relay; default: system CAs

    def send(self, message: EmailMessage) -> None:
        """Send ``message`` to its To/Cc/Bcc recipients; sets From to ``sender`` if absent.

        smtplib's exceptions (``smtplib.SMTPException``, ``OSError``) propagate; a bad
        configuration raises :class:`~eams_pipeline.config.ConfigError` before connecting.
        """
        security = self._security()
        password = self._password()
        if message["From"] is None:
            message["From"] = self.sender
        if security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout_seconds, context=self._tls_context()
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds)
        with smtp:
            if security == "starttls":
                smtp.starttls(context=self._tls_context())
            if self.username:
                smtp.login(self.username, password or "")
            smtp.send_message(message)

    def _security(self) -> str:
        security = self.security.strip().lower()
        if security not in SECURITY_MODES:
            raise ConfigError(
                f"SMTP security must be one of {', '.join(SECURITY_MODES)}, got {self.security!r}"
            )
        return security

    def _password(self) -> str | None:
        if not self.username:
            return None
        name = self.password_env or DEFAULT_PASSWORD_ENV
        password = env_secret(name)
        if password is None:
            raise ConfigError(
                f"SMTP user {self.username!r} needs a password in {name} (or {name}_FILE)"
            )
        return password

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


def smtp_resource_from_env() -> SmtpResource:
    """An :class:`SmtpResource` from ``EAMS_SMTP_*`` and ``EAMS_MAIL_FROM``.

    ``EAMS_SMTP_HOST`` (default 127.0.0.1), ``EAMS_SMTP_PORT`` (default 25, 587 or 465
    by security), ``EAMS_SMTP_SECURITY`` (none|starttls|ssl, default none),
    ``EAMS_SMTP_USERNAME``, ``EAMS_SMTP_PASSWORD_ENV`` (the variable holding the password,
    default ``EAMS_SMTP_PASSWORD``), ``EAMS_SMTP_CA_FILE``, ``EAMS_SMTP_TIMEOUT_SECONDS``,
    ``EAMS_MAIL_FROM``.
    """
    security = (env_str("EAMS_SMTP_SECURITY", "none") or "none").strip().lower()
    if security not in SECURITY_MODES:
        raise ConfigError(
            f"EAMS_SMTP_SECURITY must be one of {', '.join(SECURITY_MODES)}, got {security!r}"
        )
    return SmtpResource(
        host=env_str("EAMS_SMTP_HOST", "127.0.0.1") or "127.0.0.1",
        port=env_int("EAMS_SMTP_PORT", DEFAULT_PORTS[security]),
        security=security,
        username=env_str("EAMS_SMTP_USERNAME"),
        password_env=env_str("EAMS_SMTP_PASSWORD_ENV", DEFAULT_PASSWORD_ENV),
        sender=env_str("EAMS_MAIL_FROM", "eams-noreply@localhost") or "eams-noreply@localhost",
        timeout_seconds=env_int("EAMS_SMTP_TIMEOUT_SECONDS", 30),
        ca_file=env_str("EAMS_SMTP_CA_FILE"),
    )
