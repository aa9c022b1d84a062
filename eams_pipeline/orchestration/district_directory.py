"""Every district's settings for the district sensors, read in one query and shared by
the sensors of a process for a few seconds (EAMS_DISTRICT_CACHE_SECONDS)."""

import threading
import time
from collections.abc import Callable, Iterable

from eams_pipeline.db.districts import District, get_district, list_districts
from eams_pipeline.orchestration.resources import DatabaseResource


class DistrictDirectory:
    """Every district's settings, read in one query and kept for ``ttl_seconds``.

    2,000 district sensors each reading their own row every tick would be 2,000 queries (and
    connections) per interval; they read this instead, refreshed by the first tick after
    ``ttl_seconds`` (``clock``: monotonic seconds, injectable). A change in master data reaches
    the sensors within ``ttl_seconds``. Thread-safe (sensors tick in threads).
    """

    def __init__(
        self,
        load: Callable[[], Iterable[District]],
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._districts: dict[str, District] = {}
        self._loaded_at: float | None = None
        self.loads = 0

    def get(self, code: str) -> District | None:
        with self._lock:
            now = self._clock()
            if self._loaded_at is None or now - self._loaded_at >= self.ttl_seconds:
                self._districts = {d.code: d for d in self._load()}
                self._loaded_at = now
                self.loads += 1
            return self._districts.get(code)


_DIRECTORIES: dict[tuple[str | None, float], DistrictDirectory] = {}
_DIRECTORIES_LOCK = threading.Lock()


def district_directory(db: DatabaseResource, ttl_seconds: float) -> DistrictDirectory:
    """The process's :class:`DistrictDirectory` of this database."""
    key = (db.url, ttl_seconds)
    with _DIRECTORIES_LOCK:
        directory = _DIRECTORIES.get(key)
        if directory is None:

            def load() -> list[District]:
                with db.connect() as conn:
                    return list_districts(conn)

            directory = _DIRECTORIES[key] = DistrictDirectory(load, ttl_seconds)
        return directory


def read_district(db: DatabaseResource, code: str, ttl_seconds: float) -> District | None:
    """The district's settings: from the shared directory, or its own row when ttl is 0."""
    if ttl_seconds <= 0:
        with db.connect() as conn:
            return get_district(conn, code)
    return district_directory(db, ttl_seconds).get(code)
