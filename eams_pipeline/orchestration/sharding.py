"""Which districts a code location serves: districts sharded over several code locations.

A fleet of districts is split over several code locations (one ``dagster code-server`` or
Helm user deployment each, same image, same module ``eams_pipeline.definitions``). Each
location builds sensors only for its own districts, chosen by the environment:

- ``EAMS_DISTRICTS=D001,D017``: only these districts (e.g. a very large district on a
  location of its own; a listed code that is not in the database gets no sensor);
- ``EAMS_DISTRICT_SHARD=i/n`` (``0 <= i < n``): the districts whose stable hash falls in
  shard ``i`` of ``n`` (a SHA-256 of the district code, never Python's salted ``hash``),
  so every location agrees without coordination and a district stays in its shard while
  ``n`` is unchanged;
- neither: every district (one location, the default).

Both may be set: a district must then be listed and fall in the shard. Pure functions: the
caller passes the district codes and the environment values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from eams_pipeline.config import ConfigError, env_str

SHARD_ENV = "EAMS_DISTRICT_SHARD"
DISTRICTS_ENV = "EAMS_DISTRICTS"


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` with ``0 <= i < n``."""
        left, sep, right = text.strip().partition("/")
        try:
            index, count = int(left), int(right)
        except ValueError:
            index, count = -1, 0
        if not sep or count < 1 or not 0 <= index < count:
            raise ConfigError(f"{SHARD_ENV} must be 'i/n' with 0 <= i < n, got {text!r}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(code: str, count: int) -> int:
    """The shard (0..count-1) of a district code: SHA-256 of the code, modulo ``count``."""
    digest = hashlib.sha256(code.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_district_list(text: str) -> frozenset[str]:
    """``"D001, D017"`` -> {"D001", "D017"} (codes are case-sensitive, blanks ignored)."""
    return frozenset(c.strip() for c in text.split(",") if c.strip())


def select_districts(
    codes: Iterable[str], *, shard: Shard | None = None, listed: frozenset[str] | None = None
) -> list[str]:
    """The codes this location serves, in their given order."""
    return [
        code
        for code in codes
        if (listed is None or code in listed)
        and (shard is None or shard_of(code, shard.count) == shard.index)
    ]


def districts_for_this_location(codes: Iterable[str]) -> list[str]:
    """:func:`select_districts` with EAMS_DISTRICT_SHARD and EAMS_DISTRICTS."""
    shard_text = env_str(SHARD_ENV)
    list_text = env_str(DISTRICTS_ENV)
    return select_districts(
        codes,
        shard=Shard.parse(shard_text) if shard_text is not None else None,
        listed=parse_district_list(list_text) if list_text is not None else None,
    )
