"""Settings read from the environment, in one place.

Every knob an operator can turn is an environment variable named here and in the README;
no other module reads ``os.environ`` (the demo and the tests set variables, they do not
read them). A secret may be given directly (``NAME``) or as a file holding it
(``NAME_FILE``). The pure core never imports this module: its settings are passed in.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `eams --help` needs neither argon2 nor pandas
    from eams_pipeline.core.passwords import Argon2Settings
    from eams_pipeline.core.upload_retention import RetentionSettings

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eams"
DEFAULT_ARCHIVE_DIR = "./var/archive"
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # the largest district's 1M rows: ~100 MB
# nightly files, 2,000 sensors on two cores: see README "A fleet of districts"
DEFAULT_SENSOR_INTERVAL_SECONDS = 180
DEFAULT_REVERT_RETENTION_DAYS = 30
DEFAULT_SETTLE_SECONDS = 60
DEFAULT_DISTRICT_CACHE_SECONDS = 60
# longer than the sensor interval, so a district sensor's next tick reuses the connection
DEFAULT_SFTP_IDLE_SECONDS = 600
SMTP_SECURITY_MODES = ("none", "starttls", "ssl")
SMTP_DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
SMTP_DEFAULT_PASSWORD_ENV = "EAMS_SMTP_PASSWORD"
DEFAULT_MAIL_FROM = "eams-noreply@localhost"


class ConfigError(RuntimeError):
    """A required setting is missing or malformed."""


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


# a secret's name is a variable's name: only such names are looked up in EAMS_SECRETS_DIR
_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def env_secret(name: str) -> str | None:
    """The secret in ``NAME``, or the content of the file named by ``NAME_FILE``, or the
    content of the file ``NAME`` in the directory ``EAMS_SECRETS_DIR`` (a Kubernetes Secret
    or a host directory mounted read-only: a new file there needs no restart, no new
    variable and no new image). Read at every use, so a changed file is taken at once."""
    value = env_str(name)
    if value is not None:
        return value
    path = env_str(f"{name}_FILE")
    if path is None:
        directory = env_str("EAMS_SECRETS_DIR")
        if directory is None or not _SECRET_NAME.fullmatch(name):
            return None
        candidate = Path(directory) / name
        try:
            return candidate.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {candidate}: {exc.strerror}") from exc
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}_FILE={path}: {exc.strerror}") from exc


# --- the MY Access database and the engine --------------------------------------------


def database_url() -> str:
    """EAMS_DATABASE_URL."""
    return env_str("EAMS_DATABASE_URL", DEFAULT_DATABASE_URL)  # type: ignore[return-value]


def sql_dir() -> Path:
    """EAMS_SQL_DIR: the migrations (default: the checkout's ``sql/``)."""
    default = Path(__file__).resolve().parents[1] / "sql"
    return Path(env_str("EAMS_SQL_DIR") or default)


SECRET_KEY_ENV = "EAMS_SECRET_KEY"
PREVIOUS_SECRET_KEY_ENV = "EAMS_SECRET_KEY_PREVIOUS"
# the documented format: hexadecimal, at least 128 bits (`secrets.token_hex(32)`: 256)
SECRET_KEY_MIN_HEX_DIGITS = 32
_HEX_KEY = re.compile(f"[0-9A-Fa-f]{{{SECRET_KEY_MIN_HEX_DIGITS},}}")
_GENERATE_KEY = "`python -c 'import secrets; print(secrets.token_hex(32))'`"


def _trimmed_secret(name: str) -> str | None:
    """``NAME`` or the content of ``NAME_FILE``, trimmed either way (a Kubernetes secret or
    a file ending in a newline is the same key); None when unset or blank."""
    value = env_secret(name)
    return (value.strip() or None) if value is not None else None


def _malformed(name: str) -> str:
    """The start of a malformed secret's message: the variable, and its _FILE when read from
    there."""
    source = "" if env_str(name) is not None else f" (read from {name}_FILE)"
    return f"{name} is malformed{source}"


def _describe(value: str) -> str:
    """What is wrong with a secret, without a character of it."""
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"{len(value)} characters, with a space, a line break or a control character inside"
    if not all(c in "0123456789abcdefABCDEF" for c in value):
        return f"{len(value)} characters, not all of them hexadecimal digits"
    return f"only {len(value)} hexadecimal digits"


def secret_key(name: str = SECRET_KEY_ENV) -> bytes:
    """The server secret that keys password fingerprints (EAMS_SECRET_KEY[_FILE]), trimmed:
    at least 32 hexadecimal digits (used as written: its UTF-8 bytes key the fingerprints).
    A missing or malformed key is a ConfigError naming the variable, never quoting it."""
    value = _trimmed_secret(name)
    if value is None:
        raise ConfigError(
            f"{name} (or {name}_FILE) is not set: it keys the password "
            f"fingerprints that detect unchanged passwords. Generate one with {_GENERATE_KEY}."
        )
    if not _HEX_KEY.fullmatch(value):
        raise ConfigError(
            f"{_malformed(name)}: expected at least {SECRET_KEY_MIN_HEX_DIGITS} hexadecimal "
            f"digits (0-9, a-f) as {_GENERATE_KEY} prints, found {_describe(value)}. To "
            f"replace a key of another format, generate a new one and move the old one to "
            f'{PREVIOUS_SECRET_KEY_ENV} (README, "Rotating the secret key").'
        )
    return value.encode("utf-8")


def previous_secret_key(name: str = PREVIOUS_SECRET_KEY_ENV) -> bytes | None:
    """The server secret before the last rotation (EAMS_SECRET_KEY_PREVIOUS[_FILE]), trimmed,
    or None: stored fingerprints made with it are still recognised (and moved to the
    current key as their rows come in). Any single-line value is accepted, so that a key
    of an older format can be rotated out."""
    value = _trimmed_secret(name)
    if value is None:
        return None
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(f"{_malformed(name)}: found {_describe(value)}")
    return value.encode("utf-8")


def check_secret_keys(
    name: str = SECRET_KEY_ENV, previous_name: str = PREVIOUS_SECRET_KEY_ENV
) -> None:
    """At start-up: the secret and the previous one are set as documented (ConfigError)."""
    secret_key(name)
    previous_secret_key(previous_name)


def argon2_settings() -> Argon2Settings:
    """EAMS_ARGON2_TIME_COST, EAMS_ARGON2_MEMORY_KIB, EAMS_ARGON2_PARALLELISM,
    EAMS_HASH_WORKERS (0 or unset: one per core)."""
    from eams_pipeline.core.passwords import Argon2Settings

    workers = env_int("EAMS_HASH_WORKERS", 0)
    return Argon2Settings(
        time_cost=env_int("EAMS_ARGON2_TIME_COST", Argon2Settings.time_cost),
        memory_kib=env_int("EAMS_ARGON2_MEMORY_KIB", Argon2Settings.memory_kib),
        parallelism=env_int("EAMS_ARGON2_PARALLELISM", Argon2Settings.parallelism),
        workers=workers if workers > 0 else (os.cpu_count() or 1),
    )


DEFAULT_HASH_BATCH_SIZE = 500
DEFAULT_HASH_CACHE_DAYS = 7


def hash_batch_size() -> int:
    """EAMS_HASH_BATCH_SIZE: passwords hashed (before the apply) and committed together into
    the hash cache; a crash loses at most one batch. Default 500 (a few seconds of argon2id
    on two cores at the OWASP minimum: bench/RESULTS.md, "Figures behind the documents")."""
    value = env_int("EAMS_HASH_BATCH_SIZE", DEFAULT_HASH_BATCH_SIZE)
    if value < 1:
        raise ConfigError(f"EAMS_HASH_BATCH_SIZE must be at least 1, got {value}")
    return value


def hash_cache_days() -> int:
    """EAMS_HASH_CACHE_DAYS: how long a cached hash the apply did not use is kept (rows that
    failed, held files awaiting approval, crashed runs not re-run). Default 7."""
    return max(0, env_int("EAMS_HASH_CACHE_DAYS", DEFAULT_HASH_CACHE_DAYS))


def max_upload_bytes() -> int:
    """EAMS_MAX_UPLOAD_BYTES: the largest students.csv accepted (default 512 MiB); a larger
    one is rejected with FILE_TOO_LARGE without being read."""
    value = env_int("EAMS_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES)
    if value < 1:
        raise ConfigError(f"EAMS_MAX_UPLOAD_BYTES must be a positive number of bytes, got {value}")
    return value


# --- the archive, SMTP ------------------------------------------------------------------


def archive_dir(override: str | None = None) -> Path:
    """EAMS_ARCHIVE_DIR (default ./var/archive)."""
    return Path(override or env_str("EAMS_ARCHIVE_DIR") or DEFAULT_ARCHIVE_DIR)


ARCHIVE_KEY_ENV = "EAMS_ARCHIVE_KEY"


def archive_keys(key_env: str = ARCHIVE_KEY_ENV) -> str:
    """The comma-separated Fernet keys in ``key_env`` (or ``key_env``_FILE)."""
    keys = env_secret(key_env)
    if not keys:
        raise ConfigError(
            f"{key_env} (or {key_env}_FILE) is not set: it encrypts the archive copy of every "
            "upload. Generate one with `python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`."
        )
    return keys


@dataclass(frozen=True)
class SmtpSettings:
    """The mail relay. The password is never a setting: ``password_env`` names the variable."""

    host: str = "127.0.0.1"
    port: int = SMTP_DEFAULT_PORTS["none"]
    security: str = "none"  # none | starttls | ssl (implicit TLS)
    username: str | None = None
    password_env: str | None = None
    sender: str = DEFAULT_MAIL_FROM
    timeout_seconds: float = 30
    ca_file: str | None = None  # a private CA bundle; default: the system CAs


def smtp_settings() -> SmtpSettings:
    """``EAMS_SMTP_HOST`` (default 127.0.0.1), ``EAMS_SMTP_PORT`` (default 25, 587 or 465
    by security), ``EAMS_SMTP_SECURITY`` (none|starttls|ssl, default none),
    ``EAMS_SMTP_USERNAME``, ``EAMS_SMTP_PASSWORD_ENV`` (the variable holding the password,
    default ``EAMS_SMTP_PASSWORD``), ``EAMS_SMTP_CA_FILE``, ``EAMS_SMTP_TIMEOUT_SECONDS``,
    ``EAMS_MAIL_FROM``."""
    security = (env_str("EAMS_SMTP_SECURITY") or SmtpSettings.security).strip().lower()
    if security not in SMTP_SECURITY_MODES:
        raise ConfigError(
            f"EAMS_SMTP_SECURITY must be one of {', '.join(SMTP_SECURITY_MODES)}, "
            f"got {security!r}"
        )
    return SmtpSettings(
        host=env_str("EAMS_SMTP_HOST") or SmtpSettings.host,
        port=env_int("EAMS_SMTP_PORT", SMTP_DEFAULT_PORTS[security]),
        security=security,
        username=env_str("EAMS_SMTP_USERNAME"),
        password_env=env_str("EAMS_SMTP_PASSWORD_ENV", SMTP_DEFAULT_PASSWORD_ENV),
        sender=env_str("EAMS_MAIL_FROM") or SmtpSettings.sender,
        timeout_seconds=env_int("EAMS_SMTP_TIMEOUT_SECONDS", SmtpSettings.timeout_seconds),
        ca_file=env_str("EAMS_SMTP_CA_FILE"),
    )


# --- orchestration ----------------------------------------------------------------------


def sensor_interval_seconds() -> int:
    """EAMS_SENSOR_INTERVAL_SECONDS: the minimum time between two ticks of a district sensor."""
    return max(1, env_int("EAMS_SENSOR_INTERVAL_SECONDS", DEFAULT_SENSOR_INTERVAL_SECONDS))


def district_cache_seconds() -> int:
    """EAMS_DISTRICT_CACHE_SECONDS: how old the district settings a sensor reads may be (all
    districts are read in one query that often; 0: each sensor reads its row every tick)."""
    return max(0, env_int("EAMS_DISTRICT_CACHE_SECONDS", DEFAULT_DISTRICT_CACHE_SECONDS))


def sftp_idle_seconds() -> int:
    """EAMS_SFTP_IDLE_SECONDS: how long an SFTP connection stays open unused in a process for
    the next tick or step to reuse (0: close it after every use)."""
    return max(0, env_int("EAMS_SFTP_IDLE_SECONDS", DEFAULT_SFTP_IDLE_SECONDS))


def settle_seconds() -> int:
    """EAMS_SETTLE_SECONDS: how long students.csv must stay unchanged before it is taken."""
    return max(0, env_int("EAMS_SETTLE_SECONDS", DEFAULT_SETTLE_SECONDS))


def operator_name() -> str:
    """Who runs an `eams uploads` decision when `--by` is not given: $USER, else the login."""
    import getpass

    return env_str("USER") or getpass.getuser()


def operator_emails() -> list[str]:
    """EAMS_OPERATOR_EMAILS: comma-separated addresses alerted when a run crashes."""
    raw = env_str("EAMS_OPERATOR_EMAILS", "") or ""
    return [a.strip() for a in raw.split(",") if a.strip()]


# --- retention: raw uploads, archive copies, error files ---------------------------------

DEFAULT_PROCESSED_RETENTION_DAYS = 0
DEFAULT_ARCHIVE_RETENTION_DAYS = 400
DEFAULT_ERROR_FILE_RETENTION_DAYS = 90
DEFAULT_RETENTION_CRON = "30 4 * * *"


def retention_settings() -> RetentionSettings:
    """``EAMS_PROCESSED_RETENTION_DAYS`` (default 0: the raw file leaves processed/ as soon
    as its run succeeded), ``EAMS_ARCHIVE_RETENTION_DAYS`` (default 400: a school year and
    more of re-runs, reverts and backfills), ``EAMS_ERROR_FILE_RETENTION_DAYS`` (default 90).
    """
    from eams_pipeline.core.upload_retention import RetentionSettings

    settings = RetentionSettings(
        processed_days=env_int("EAMS_PROCESSED_RETENTION_DAYS", DEFAULT_PROCESSED_RETENTION_DAYS),
        archive_days=env_int("EAMS_ARCHIVE_RETENTION_DAYS", DEFAULT_ARCHIVE_RETENTION_DAYS),
        error_file_days=env_int(
            "EAMS_ERROR_FILE_RETENTION_DAYS", DEFAULT_ERROR_FILE_RETENTION_DAYS
        ),
    )
    for name, days in (
        ("EAMS_PROCESSED_RETENTION_DAYS", settings.processed_days),
        ("EAMS_ARCHIVE_RETENTION_DAYS", settings.archive_days),
        ("EAMS_ERROR_FILE_RETENTION_DAYS", settings.error_file_days),
    ):
        if days < 0:
            raise ConfigError(f"{name} must be 0 or more days, got {days}")
    if settings.archive_days < settings.processed_days:
        raise ConfigError(
            "EAMS_ARCHIVE_RETENTION_DAYS must not be shorter than EAMS_PROCESSED_RETENTION_DAYS: "
            "a raw file leaves processed/ only while its encrypted archive copy exists"
        )
    return settings


def retention_cron() -> str:
    """EAMS_RETENTION_CRON: when the retention job runs (default 04:30 UTC daily)."""
    return env_str("EAMS_RETENTION_CRON", DEFAULT_RETENTION_CRON) or DEFAULT_RETENTION_CRON


def revert_retention_days() -> int:
    """EAMS_REVERT_RETENTION_DAYS: how long after it was applied an upload can be reverted."""
    return max(0, env_int("EAMS_REVERT_RETENTION_DAYS", DEFAULT_REVERT_RETENTION_DAYS))


# --- Dagster runs' retention and the fleet status -------------------------------------

DEFAULT_RUN_RETENTION_DAYS = 90
DEFAULT_RUN_RETENTION_BATCH = 500
DEFAULT_RUN_RETENTION_CRON = "0 5 * * *"
DEFAULT_FLEET_STATUS_CRON = "*/15 * * * *"


def run_retention_days() -> int:
    """EAMS_RUN_RETENTION_DAYS: finished Dagster runs older than this go with their events
    (default 90; at least 1)."""
    days = env_int("EAMS_RUN_RETENTION_DAYS", DEFAULT_RUN_RETENTION_DAYS)
    if days < 1:
        raise ConfigError(f"EAMS_RUN_RETENTION_DAYS must be 1 or more days, got {days}")
    return days


def run_retention_batch() -> int:
    """EAMS_RUN_RETENTION_BATCH: runs looked at and deleted per batch (default 500)."""
    size = env_int("EAMS_RUN_RETENTION_BATCH", DEFAULT_RUN_RETENTION_BATCH)
    if size < 1:
        raise ConfigError(f"EAMS_RUN_RETENTION_BATCH must be 1 or more, got {size}")
    return size


def run_retention_cron() -> str:
    """EAMS_RUN_RETENTION_CRON: when the run retention job runs (default 05:00 UTC daily)."""
    cron = env_str("EAMS_RUN_RETENTION_CRON", DEFAULT_RUN_RETENTION_CRON)
    return cron or DEFAULT_RUN_RETENTION_CRON


def fleet_status_cron() -> str:
    """EAMS_FLEET_STATUS_CRON: when the fleet_status asset is refreshed (default every 15
    minutes)."""
    return env_str("EAMS_FLEET_STATUS_CRON", DEFAULT_FLEET_STATUS_CRON) or DEFAULT_FLEET_STATUS_CRON


def dagster_home() -> str | None:
    """DAGSTER_HOME (Dagster's own variable): where `eams fleet status` finds the instance
    whose failed runs it reads; unset: the database's facts only."""
    return env_str("DAGSTER_HOME")
