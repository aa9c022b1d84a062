"""Progress of an upload's steps, for whoever shows it (the CLI on stderr, the Dagster log).

`process_upload` reports through a `Progress`: each step's start and end (with its
seconds), and for the long one (hashing passwords) how far it is, `advanced(step, done,
total)`, after every committed batch. The base class ignores everything; `LineProgress`
writes plain lines (at most one "advanced" line per `interval` seconds), which is what the
CLI prints with --verbose when stderr is not a terminal and what the Dagster run logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Receives progress; every method may be called from the thread running the upload
    only. The default does nothing."""

    def started(self, step: str) -> None:
        """A step began."""

    def advanced(self, step: str, done: int, total: int) -> None:
        """`done` of `total` units of a long step are finished (durably, for hashing)."""

    def finished(self, step: str, seconds: float) -> None:
        """A step ended after `seconds` (not called when it failed)."""


def rate_and_eta(done: int, total: int, elapsed: float) -> tuple[float, float | None]:
    """Units per second so far, and the seconds left at that rate (None: unknown yet)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else None
    return rate, eta


def describe_advance(step: str, done: int, total: int, elapsed: float) -> str:
    rate, eta = rate_and_eta(done, total, elapsed)
    pct = 100.0 * done / total if total else 100.0
    left = f", ETA {_duration(eta)}" if eta is not None and done < total else ""
    return f"{step}: {done:,}/{total:,} ({pct:.0f}%), {rate:,.1f}/s{left}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    if hours:
        return f"{hours}h{m:02d}m"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


class LineProgress(Progress):
    """Plain lines through `write`: "<step> done in 1.23 s" after each step, and
    "hash: 512/10,000 (5%), 91.3/s, ETA 1m44s" at most every `interval` seconds (and
    always the last one).

    With `batch_seconds`, lines are held and written together (one `write` of the lines
    joined by line breaks) once `batch_seconds` have passed since the first one held, and
    by `flush()`: the Dagster run log, where every write is an event stored in PostgreSQL,
    gets one entry for a small upload instead of one per step."""

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        interval: float = 2.0,
        batch_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = write
        self._interval = interval
        self._batch_seconds = batch_seconds
        self._clock = clock
        self._began: dict[str, float] = {}
        self._last_line: dict[str, float] = {}
        self._held: list[str] = []
        self._held_since = 0.0

    def _write(self, line: str) -> None:
        if self._batch_seconds is None:
            self._sink(line)
            return
        now = self._clock()
        if not self._held:
            self._held_since = now
        self._held.append(line)
        if now - self._held_since >= self._batch_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the lines held (batch_seconds), if any."""
        if self._held:
            lines, self._held = self._held, []
            self._sink("\n".join(lines))

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()  # also when the upload failed: its lines so far are written first

    def started(self, step: str) -> None:
        self._began[step] = self._clock()

    def advanced(self, step: str, done: int, total: int) -> None:
        now = self._clock()
        began = self._began.setdefault(step, now)
        last = self._last_line.get(step)
        if done < total and last is not None and now - last < self._interval:
            return
        self._last_line[step] = now
        self._write(describe_advance(step, done, total, now - began))

    def finished(self, step: str, seconds: float) -> None:
        self._write(f"{step} done in {seconds:.2f} s")
