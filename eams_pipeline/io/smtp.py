"""Sending email through an SMTP relay: plain, STARTTLS or implicit TLS, optional login.

The relay is described by :class:`eams_pipeline.config.SmtpSettings`. The password is
never part of the settings: ``password_env`` names the environment variable that holds it
(``NAME_FILE`` pointing to a file also works).
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from eams_pipeline.config import (
    SMTP_DEFAULT_PASSWORD_ENV,
    SMTP_SECURITY_MODES,
    ConfigError,
    SmtpSettings,
    env_secret,
)


def send_email(settings: SmtpSettings, message: EmailMessage) -> None:
    """Send ``message`` to its To/Cc/Bcc recipients; sets From to the sender if absent.

    smtplib's exceptions (``smtplib.SMTPException``, ``OSError``) propagate; a bad
    configuration raises :class:`~eams_pipeline.config.ConfigError` before connecting.
    """
    security = _security(settings)
    password = _password(settings)
    if message["From"] is None:
        message["From"] = settings.sender
    if security == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            settings.host,
            settings.port,
            timeout=settings.timeout_seconds,
            context=_tls_context(settings),
        )
    else:
        smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_seconds)
    with smtp:
        if security == "starttls":
            smtp.starttls(context=_tls_context(settings))
        if settings.username:
            smtp.login(settings.username, password or "")
        smtp.send_message(message)


def _security(settings: SmtpSettings) -> str:
    security = settings.security.strip().lower()
    if security not in SMTP_SECURITY_MODES:
        raise ConfigError(
            f"SMTP security must be one of {', '.join(SMTP_SECURITY_MODES)}, "
            f"got {settings.security!r}"
        )
    return security


def _password(settings: SmtpSettings) -> str | None:
    if not settings.username:
        return None
    name = settings.password_env or SMTP_DEFAULT_PASSWORD_ENV
    password = env_secret(name)
    if password is None:
        raise ConfigError(
            f"SMTP user {settings.username!r} needs a password in {name} (or {name}_FILE, "
            f"or a file {name} in EAMS_SECRETS_DIR)"
        )
    return password


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.ca_file)
