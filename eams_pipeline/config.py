"""Settings read from the environment, in one place.

Every knob an operator can turn is an environment variable named here and in the README.
A secret may be given directly (``NAME``) or as a file holding it (``NAME_FILE``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eams"


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


def env_secret(name: str) -> str | None:
    """The secret in ``NAME``, or the content of the file named by ``NAME_FILE``."""
    value = env_str(name)
    if value is not None:
        return value
    path = env_str(f"{name}_FILE")
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}_FILE={path}: {exc.strerror}") from exc


def database_url() -> str:
    return env_str("EAMS_DATABASE_URL", DEFAULT_DATABASE_URL)  # type: ignore[return-value]


def secret_key() -> bytes:
    """The server secret that keys password fingerprints (EAMS_SECRET_KEY[_FILE])."""
    value = env_secret("EAMS_SECRET_KEY")
    if not value:
        raise ConfigError(
            "EAMS_SECRET_KEY (or EAMS_SECRET_KEY_FILE) is not set: it keys the password "
            "fingerprints that detect unchanged passwords. Generate one with "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`."
        )
    return value.encode("utf-8")


@dataclass(frozen=True)
class Argon2Settings:
    """argon2id parameters; the defaults are OWASP's minimum (m=19 MiB, t=2, p=1)."""

    time_cost: int = 2
    memory_kib: int = 19456
    parallelism: int = 1
    workers: int = 0  # 0: one per core

    @classmethod
    def from_env(cls) -> Argon2Settings:
        workers = env_int("EAMS_HASH_WORKERS", 0)
        return cls(
            time_cost=env_int("EAMS_ARGON2_TIME_COST", cls.time_cost),
            memory_kib=env_int("EAMS_ARGON2_MEMORY_KIB", cls.memory_kib),
            parallelism=env_int("EAMS_ARGON2_PARALLELISM", cls.parallelism),
            workers=workers if workers > 0 else (os.cpu_count() or 1),
        )
