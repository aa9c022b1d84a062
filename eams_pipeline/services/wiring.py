"""What the CLI and the Dagster resources both build from the environment, in one place:
the hashing engine, the archive of raw uploads and the mail relay that sends the
district's outcome email. The variables, their meanings and their defaults are
eams_pipeline.config's; this module only puts them together."""

from __future__ import annotations

from eams_pipeline import config
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.io.archive import Archive
from eams_pipeline.services.process import Engine


def engine(
    secret_key_env: str = config.SECRET_KEY_ENV,
    previous_secret_key_env: str = config.PREVIOUS_SECRET_KEY_ENV,
) -> Engine:
    """The secret keying the password fingerprints (EAMS_SECRET_KEY[_FILE]), the one before
    its last rotation (EAMS_SECRET_KEY_PREVIOUS[_FILE], optional), the argon2id settings
    (EAMS_ARGON2_*, EAMS_HASH_WORKERS) and the hash cache's batch and days
    (EAMS_HASH_BATCH_SIZE, EAMS_HASH_CACHE_DAYS). A missing or malformed secret is a
    ConfigError naming its variable."""
    previous = config.previous_secret_key(previous_secret_key_env)
    return Engine(
        secret=config.secret_key(secret_key_env),
        previous_secrets=(previous,) if previous else (),
        hasher=PasswordHasher(config.argon2_settings()),
        hash_batch_size=config.hash_batch_size(),
        hash_cache_days=config.hash_cache_days(),
    )


def archive(directory: str | None = None, key_env: str = config.ARCHIVE_KEY_ENV) -> Archive:
    """The encrypted archive in `directory` (default EAMS_ARCHIVE_DIR), with the Fernet
    keys in `key_env` (EAMS_ARCHIVE_KEY[_FILE])."""
    return Archive(config.archive_dir(directory), config.archive_keys(key_env))


def mail_relay() -> config.SmtpSettings:
    """The mail relay (EAMS_SMTP_*, EAMS_MAIL_FROM)."""
    return config.smtp_settings()
