"""argon2id password hashing on every core (argon2-cffi releases the GIL while hashing)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher as _Argon2
from argon2 import Type


@dataclass(frozen=True)
class Argon2Settings:
    """argon2id parameters; the defaults are OWASP's minimum (m=19 MiB, t=2, p=1)."""

    time_cost: int = 2
    memory_kib: int = 19456
    parallelism: int = 1
    workers: int = 1  # threads hashing in parallel


class PasswordHasher:
    def __init__(self, settings: Argon2Settings) -> None:
        self.settings = settings
        self._argon2 = _Argon2(
            time_cost=self.settings.time_cost,
            memory_cost=self.settings.memory_kib,
            parallelism=self.settings.parallelism,
            type=Type.ID,
        )

    @property
    def workers(self) -> int:
        return self.settings.workers

    def hash(self, password: str) -> str:
        return self._argon2.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._argon2.verify(password_hash, password)
        except Exception:  # argon2's VerifyMismatchError, InvalidHashError
            return False

    def hash_many(self, passwords: Sequence[str]) -> list[str]:
        """Hash in parallel on `workers` threads; order is kept."""
        if len(passwords) <= 1 or self.workers <= 1:
            return [self._argon2.hash(p) for p in passwords]
        chunk = max(1, min(256, len(passwords) // (self.workers * 4)))
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="argon2") as pool:
            return list(pool.map(self._argon2.hash, passwords, chunksize=chunk))
