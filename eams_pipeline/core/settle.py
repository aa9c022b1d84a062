"""When is an upload ready? The sensor's decision, as pure functions (no Dagster, no I/O).

Given what ``incoming/`` holds now, what the sensor remembered from its previous ticks (the
cursor) and the current time, :func:`decide` says whether to request a run and what to
remember next:

- only ``students.csv`` counts; WinSCP's ``*.filepart`` temporary names mean an upload is in
  progress, and any other file is left alone and reported;
- the file is taken once its size and modification time have stayed the same for the settle
  window (observed by the sensor itself: the client may set any modification time);
- a district with a nightly processing time (``process_at``, local time in the district's
  timezone) waits until the first such time at or after the file settled;
- ``check/students.csv`` (a check drop: validated, never applied) is watched the same way
  on its own part of the cursor (:func:`decide_check`), without ``process_at``;
- one run is requested per upload: while the same file (same size and modification time) is
  still in ``incoming/`` after its run was requested, nothing more is requested, unless
  that run has already succeeded, which means the file there now is a new upload with the
  same size and time.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from eams_pipeline.core.names import CHECK, PARTIAL_SUFFIX, UPLOAD_NAME, UploadRef
from eams_pipeline.core.remote_files import RemoteFile, shown_name


@dataclass(frozen=True)
class Watched:
    """The students.csv being watched, and since when it has looked like this."""

    size: int
    mtime: int
    since: float  # epoch seconds of the first tick that saw this size and time


@dataclass(frozen=True)
class Requested:
    """The students.csv a run was requested for."""

    size: int
    mtime: int
    upload_key: str
    at: float


@dataclass(frozen=True)
class Other:
    """A stray file of incoming/ (misnamed-file digests): its size and time, since when it
    has looked like that, and whether a digest has reported it as it is."""

    size: int
    mtime: int
    since: float
    reported: bool = False


@dataclass(frozen=True)
class SensorState:
    """The sensor's cursor. ``others``: the stray files of incoming/ (at most
    ``alerts.MAX_TRACKED`` of them), keyed by a short digest of the name so that the cursor
    stays small whatever the names; ``digest_day``: the district's local date of the last
    stray-file digest this sensor saw sent (no database look-up again that day)."""

    watched: Watched | None = None
    requested: Requested | None = None
    others: dict[str, Other] = field(default_factory=dict)
    digest_day: str | None = None
    # check/students.csv (a check drop), watched and requested as incoming/'s file is
    check_watched: Watched | None = None
    check_requested: Requested | None = None

    @property
    def check(self) -> SensorState:
        """The check drop's part, as a state :func:`decide` reads."""
        return SensorState(watched=self.check_watched, requested=self.check_requested)

    def to_cursor(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> SensorState:
        if not cursor:
            return cls()
        try:
            raw = json.loads(cursor)
            watched = raw.get("watched")
            requested = raw.get("requested")
            others = raw.get("others") or {}
            digest_day = raw.get("digest_day")
            check_watched = raw.get("check_watched")
            check_requested = raw.get("check_requested")
            return cls(
                watched=Watched(**watched) if watched else None,
                requested=Requested(**requested) if requested else None,
                others={str(key): Other(**w) for key, w in others.items()},
                digest_day=str(digest_day) if digest_day else None,
                check_watched=Watched(**check_watched) if check_watched else None,
                check_requested=Requested(**check_requested) if check_requested else None,
            )
        except (ValueError, TypeError, AttributeError):
            return cls()  # an unreadable cursor: start watching afresh


@dataclass(frozen=True)
class Decision:
    state: SensorState
    request: Requested | None  # the run to request now, if any
    reason: str  # what the tick saw, for the tick log or the skip reason
    ignored: tuple[str, ...] = ()  # other files in incoming/, left alone


def decide(
    files: Sequence[RemoteFile],
    state: SensorState,
    now: dt.datetime,
    *,
    district: str,
    settle_seconds: float,
    process_at: dt.time | None = None,
    timezone: str = "UTC",
    requested_run_succeeded: bool = False,
) -> Decision:
    """The sensor's decision for one tick (see the module docstring)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now_ts = now.timestamp()
    ignored = tuple(
        f.name for f in files if f.name != UPLOAD_NAME and not f.name.endswith(PARTIAL_SUFFIX)
    )
    partial = [f.name for f in files if f.name.endswith(PARTIAL_SUFFIX)]
    current = next((f for f in files if f.name == UPLOAD_NAME), None)

    if current is None:
        reason = f"no incoming/{UPLOAD_NAME}"
        if partial:
            reason += f" (upload in progress: {listed(partial)})"
        # the requested file is gone: its run claimed it
        return Decision(SensorState(), None, reason, ignored)

    def same(x: Watched | Requested | None) -> bool:
        return x is not None and (x.size, x.mtime) == (current.size, current.mtime)

    if same(state.requested) and not requested_run_succeeded:
        assert state.requested is not None
        return Decision(
            state,
            None,
            f"a run was already requested for this {UPLOAD_NAME} "
            f"(upload {state.requested.upload_key}); waiting for it to claim the file",
            ignored,
        )

    watched = (
        state.watched
        if same(state.watched)
        else Watched(size=current.size, mtime=current.mtime, since=now_ts)
    )
    stable_for = now_ts - watched.since
    if stable_for < settle_seconds:
        return Decision(
            SensorState(watched=watched),
            None,
            f"{UPLOAD_NAME} ({current.size} bytes) is settling: unchanged for "
            f"{stable_for:.0f}s of {settle_seconds:g}s",
            ignored,
        )

    if process_at is not None:
        due = due_time(watched.since + settle_seconds, process_at, timezone)
        if now_ts < due.timestamp():
            return Decision(
                SensorState(watched=watched),
                None,
                f"{UPLOAD_NAME} has settled; the district processes nightly at "
                f"{process_at.strftime('%H:%M')} {timezone}: waiting until {due.isoformat()}",
                ignored,
            )

    ref = UploadRef.new(district, now.astimezone(dt.UTC))
    request = Requested(size=current.size, mtime=current.mtime, upload_key=ref.key, at=now_ts)
    return Decision(
        SensorState(requested=request),
        request,
        f"{UPLOAD_NAME} ({current.size} bytes) settled: requesting upload {ref.key}",
        ignored,
    )


def decide_check(
    files: Sequence[RemoteFile],
    state: SensorState,
    now: dt.datetime,
    *,
    district: str,
    settle_seconds: float,
    requested_run_succeeded: bool = False,
    upload_key: str | None = None,
) -> Decision:
    """The decision for ``check/`` (a check drop: validated, never applied): :func:`decide`
    on the cursor's check part (``state.check``; the returned state is that part), without
    ``process_at`` (a check is answered as soon as its file has settled). ``upload_key``:
    the upload requested in the same tick, whose key the check's must not be (both are
    taken at ``now``): the check's is then a microsecond later."""
    decision = decide(
        files,
        state.check,
        now,
        district=district,
        settle_seconds=settle_seconds,
        requested_run_succeeded=requested_run_succeeded,
    )
    request = decision.request
    if request is not None and request.upload_key == upload_key:
        later = UploadRef.new(district, now.astimezone(dt.UTC) + dt.timedelta(microseconds=1))
        request = replace(request, upload_key=later.key)
        decision = replace(decision, state=SensorState(requested=request), request=request)
    if request is not None:
        reason = (
            f"{CHECK}/{UPLOAD_NAME} ({request.size} bytes) settled: requesting check "
            f"{request.upload_key}"
        )
    elif decision.reason.startswith("no incoming/"):
        reason = f"no {CHECK}/{UPLOAD_NAME}"
    else:
        reason = f"{CHECK}/: {decision.reason}"
    return replace(decision, reason=reason)


def listed(names: Sequence[str], limit: int = 5, width: int = 60) -> str:
    """At most ``limit`` names, each shown escaped and cut at ``width`` characters, then how
    many more: a tick's reason or log line stays short whatever incoming/ holds."""
    shown = [shown_name(name, width) for name in names[:limit]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def due_time(settled_at: float, process_at: dt.time, timezone: str) -> dt.datetime:
    """The first instant at or after ``settled_at`` whose local time is ``process_at``.

    On a day when that local time does not exist (clocks jump forward) it is read with the
    offset before the jump (02:30 becomes 03:30); when it happens twice (clocks go back) it
    is the first one.
    """
    tz = zoneinfo.ZoneInfo(timezone)
    local = dt.datetime.fromtimestamp(settled_at, tz)
    for days in range(3):
        day = local.date() + dt.timedelta(days=days)
        candidate = dt.datetime.combine(day, process_at.replace(tzinfo=None), tzinfo=tz)
        if candidate.timestamp() >= settled_at:
            return candidate
    raise AssertionError("unreachable: a local time recurs within three days")
