"""What `eams` shows a person at a terminal: short summaries and tables, as lines, and the
live progress of a long step on stderr.

The summaries do no I/O: results and database rows in, lines out; `eams_pipeline.cli`
prints them, and prints the JSON forms instead with --json or when standard output is not a
terminal. The commands import this module when they print (it imports pandas through
core.outcome; rich only when a progress bar is shown).
"""

from __future__ import annotations

import datetime as dt
import shlex
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from eams_pipeline.core.guard import DEFAULT_THRESHOLDS, MIN_COUNT, RULES
from eams_pipeline.core.outcome import COUNT_KEYS, OUTCOMES, UploadStatus
from eams_pipeline.services.progress import Progress, describe_advance

if TYPE_CHECKING:
    from eams_pipeline.core.fleet_ranking import FleetStatus

# the first line of an upload's summary, by status
_HEADLINES = {
    UploadStatus.PROCESSED: "Processed",
    UploadStatus.PARTIALLY_PROCESSED: "Partially processed (the valid rows applied)",
    UploadStatus.REJECTED: "REJECTED (nothing applied)",
    UploadStatus.HELD: "HELD by the change guard (nothing applied)",
    UploadStatus.SUPERSEDED: "SUPERSEDED (nothing applied)",
    UploadStatus.DISCARDED: "Discarded (nothing applied)",
    UploadStatus.REVERTED: "Reverted",
    UploadStatus.RECEIVED: "Received (no outcome yet)",
    UploadStatus.CHECKED: "Checked (a check drop: nothing applied)",
}
_GUARD_SHORT = {
    "max_deactivated_pct": "deactivated",
    "max_updated_pct": "updated",
    "max_row_drop_pct": "row drop",
}

# what an operator should weigh before deciding an upload held by a pause rule
_PAUSE_HINTS = {
    "paused": (
        "it arrived on a day the district's master data pauses (`pauses:`); approve it only "
        "if the district wants it applied during the pause, else discard it"
    ),
    "first_after_pause": (
        "the first upload after a long pause (a new school year's roster?): compare its "
        "counts with `eams export students --district {district}` before approving; a wrong "
        "file (last year's roster, one school only) is best discarded"
    ),
}


def guard_trip_lines(
    trips: list[dict[str, Any]], district: str, indent: str, label: str = ""
) -> list[str]:
    """Each rule that held an upload with its figures, and what to weigh for a pause rule."""
    out = []
    for t in trips:
        out.append(f"{indent}{label}{t['rule']}: {t['message']}")
        hint = _PAUSE_HINTS.get(t["rule"])
        if hint:
            out.append(f"{indent}  hint: {hint.format(district=district)}")
    return out


def when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%MZ") if value else ""


def table(rows: Sequence[Sequence[object]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart (the first row: the header)."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def counts_line(figures: dict[str, Any]) -> str:
    """`10 rows: 3 added, 1 activated, ...` in the order of every other view."""
    rest = ", ".join(f"{int(figures[k]):,} {k}" for k in OUTCOMES)
    return f"{int(figures['rows']):,} rows: {rest}"


def error_codes_text(codes: dict[str, int]) -> str:
    return ", ".join(f"{code} {n:,}" for code, n in sorted(codes.items()))


def approve_discard_commands(key: str, *, file: str | None, older: bool = False) -> list[str]:
    """How to decide on a held upload (`file`: the --file to give, when not archived)."""
    given = f" --file {shlex.quote(file)}" if file else ""
    flag = " --allow-older" if older else ""
    return [
        "  to apply it (re-planned against the current data):",
        f"    eams uploads approve {key}{given}{flag} --by YOUR_NAME",
        "  to discard it (nothing applied):",
        f"    eams uploads discard {key} --by YOUR_NAME",
    ]


def upload_summary(
    summary: dict[str, Any],
    *,
    upload_key: str | None,
    dry_run: bool = False,
    first_error: str | None = None,
    approve_file: str | None = None,
    superseded_by: str | None = None,
    superseded_held: Iterable[str] = (),
    decided: str | None = None,
) -> list[str]:
    """An upload's outcome in a few lines: status, counts, error codes, the error file, the
    guard rule and the approve/discard commands when held.

    `summary`: `UploadResult.summary()` (the JSON of SPEC §8); `first_error`: the file-level
    error's message of a rejected file; `approve_file`: the file to name in the approve
    command (an upload that has no archive copy); `decided`: e.g. "approved by alice"."""
    status = UploadStatus(summary["status"])
    headline = _HEADLINES.get(status, str(status))
    if dry_run:
        if not headline.split()[0].isupper():  # "would be processed", "would be HELD"
            headline = headline[0].lower() + headline[1:]
        lines = [f"Dry run for {summary['district']} (nothing was changed): would be {headline}"]
    else:
        name = f"upload {upload_key}" if upload_key else f"upload id {summary['upload_id']}"
        lines = [f"{headline}: {name} of {summary['district']}"]
    if decided:
        lines.append(f"  {decided}")
    if status == UploadStatus.REJECTED:
        if first_error:
            lines.append(f"  {first_error}")
    else:
        lines.append("  " + counts_line(summary))
        if summary.get("deactivated_missing"):
            lines.append(
                f"  and {summary['deactivated_missing']:,} students absent from the file "
                "deactivated (full roster)"
            )
    if summary["error_codes"] and status != UploadStatus.REJECTED:
        lines.append("  error codes: " + error_codes_text(summary["error_codes"]))
    if summary["error_file"]:
        lines.append(f"  error file: {summary['error_file']}")
    elif dry_run and summary["error_codes"]:
        lines.append("  error file: not written (a dry run writes one with --errors-out PATH)")
    if "change_report" in summary:  # --changes-out
        lines.append(f"  change report: {summary['change_report'] or 'not written'}")
    guard = summary.get("guard")
    if guard:
        trips = guard.get("trips") or [guard]
        lines += guard_trip_lines(trips, summary["district"], "  ", "guard rule ")
    if superseded_by:
        lines.append(
            f"  superseded by upload {superseded_by}, received after it and applied first "
            "(students are never rolled back to an older file); process the file again if "
            "it must be applied over that upload"
        )
    held = list(superseded_held)
    if held:
        lines.append("  held uploads it superseded: " + ", ".join(held))
    if status == UploadStatus.HELD and upload_key and not dry_run:
        lines += approve_discard_commands(upload_key, file=approve_file)
    return lines


def revert_summary(
    done: Sequence[dict[str, Any]], *, dry_run: bool, confirming: bool = False
) -> list[str]:
    """What a revert put back (or, as a dry run or before the confirmation, would put
    back), upload by upload, newest first."""
    if dry_run or confirming:
        target = done[-1]["upload_key"]  # newest first: the one asked for is last
        head = f"reverting {target} would put back"
        if len(done) > 1:
            head += f" {len(done)} uploads, newest first"
        lines = [
            f"Dry run (nothing was changed): {head}" if dry_run else head[0].upper() + head[1:]
        ]
    else:
        lines = [f"Reverted {len(done)} upload{'s' if len(done) != 1 else ''}, newest first"]
    for r in done:
        lines.append(
            f"  {r['upload_key']}: {r['restored']:,} students restored as before, "
            f"{r['created_deactivated']:,} students it created deactivated"
        )
        moves = r.get("licenses_available") or {}
        if moves:
            lines.append(
                "    licenses available: "
                + ", ".join(f"{order} {change:+,}" for order, change in moves.items())
            )
        if "change_report" in r:  # --changes-dir
            lines.append(f"    change report: {r['change_report'] or 'not written'}")
    return lines


def guard_text(guard: dict[str, float | None] | None) -> str:
    """A district's change-guard limits in a table cell: `default`, `off`, or the limits."""
    limits = guard or DEFAULT_THRESHOLDS
    if dict(limits) == DEFAULT_THRESHOLDS:
        return "default"
    if not any(limits.get(rule) for rule in RULES):
        return "off"
    parts = [
        f"{_GUARD_SHORT[rule]} {_number(limits[rule])}%"
        if limits.get(rule)
        else f"{_GUARD_SHORT[rule]} off"
        for rule in RULES
    ]
    return ", ".join(parts) + f", min {_number(limits.get(MIN_COUNT) or 0)}"


def _number(value: float) -> str:
    return f"{value:g}"


def districts_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    header = ("CODE", "NAME", "MODE", "GUARD", "LAST UPLOAD", "RECEIVED", "STATUS")
    body = [
        (
            r["code"],
            r["name"],
            r["mode"],
            guard_text(r["guard"]),
            r["last_upload"] or "-",
            when(r["last_received_at"]),
            r["last_status"] or "",
        )
        for r in rows
    ]
    return table([header, *body])


def uploads_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """`eams uploads list`: one line per upload, newest first."""
    header = (
        "UPLOAD KEY", "RECEIVED", "STATUS", "ROWS", "ADD", "ACT", "DEACT", "UPD", "UNCH", "ERR",
        "ERROR CODES", "GUARD / REVERT",
    )  # fmt: skip
    body = []
    for r in rows:
        notes = []
        if r.get("checked_as"):  # a check drop: what the file would have come to
            held = f": {r['guard_trip'].get('rule')}" if r["guard_trip"] else ""
            notes.append(f"check, would be {r['checked_as']}{held}")
        elif r["guard_trip"]:
            notes.append("held: " + str(r["guard_trip"].get("rule")))
        if r["decision"]:
            notes.append(f"{r['decision']} by {r['decided_by']}")
        if r["reverted_at"]:
            notes.append(f"reverted {when(r['reverted_at'])} by {r['reverted_by']}")
        if r["deactivated_missing"]:
            notes.append(f"{r['deactivated_missing']} absent deactivated")
        codes = ", ".join(f"{k}:{v}" for k, v in sorted((r["error_codes"] or {}).items()))
        body.append(
            (
                r["upload_key"],
                when(r["received_at"]),
                r["status"],
                *("" if r[k] is None else str(r[k]) for k in COUNT_KEYS),
                codes,
                "; ".join(notes),
            )
        )
    return table([header, *body])


def upload_details(row: dict[str, Any]) -> list[str]:
    """`eams uploads show`: the summary, the guard's figures, the first error lines."""
    out = [
        f"Upload {row['upload_key']} (id {row['upload_id']}) of district {row['district']}",
        f"  received {when(row['received_at'])}, applied {when(row['applied_at']) or '-'}",
        f"  status   {row['status']}",
        "  counts   " + ", ".join(f"{k} {row[k]}" for k in COUNT_KEYS),
    ]
    if row["deactivated_missing"]:
        out.append(f"  absent from the file, deactivated: {row['deactivated_missing']}")
    if row.get("checked_as"):
        out.append(
            f"  a check drop: nothing applied; as an upload it would be {row['checked_as']}; "
            f"report {row['error_file']}"
        )
    if row["guard_trip"]:
        checked = row.get("checked_as")
        out.append(
            "  the change guard WOULD HOLD it:" if checked else "  HELD by the change guard:"
        )
        out += guard_trip_lines(row["guard_trip"].get("trips", []), row["district"], "    ")
    if row["status"] == "held" or (row["status"] == "superseded" and row["guard_trip"]):
        out += approve_discard_commands(
            row["upload_key"],
            file=None if row["archived"] else "PATH_OF_THE_FILE",
            older=row["status"] == "superseded",
        )
    if row["guard_figures"]:
        f = row["guard_figures"]
        out.append("  guard figures: " + ", ".join(f"{k} {v}" for k, v in f.items()))
    if row["decision"]:
        out.append(f"  {row['decision']} by {row['decided_by']} at {when(row['decided_at'])}")
    if row["reverted_at"]:
        out.append(
            f"  reverted by {row['reverted_by']} at {when(row['reverted_at'])}: "
            f"{row['revert_counts']}"
        )
    if row["error_codes"]:
        out.append("  error codes: " + error_codes_text(row["error_codes"]))
    if row["first_errors"]:
        out.append(f"  first errors ({row['error_lines']} in all):")
        out += [
            f"    line {e['line']}: {e['code']} {e['column']} {e['message']}"
            for e in row["first_errors"]
        ]
    return out


def student_history_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """`eams history`: each upload that changed the student, what changed (before -> after);
    a password only as `changed`."""
    out = []
    for e in entries:
        where = f"line {e['line_number']}" if e["line_number"] else "absent from the file"
        note = (
            f"  [reverted {when(e['reverted_at'])} by {e['reverted_by']}]"
            if e["reverted_at"]
            else ""
        )
        out.append(f"{when(e['applied_at'])}  {e['upload_key']}  {e['change']} ({where}){note}")
        for c in e["changes"]:
            if c["field"] == "password":
                out.append("    Password: changed")
            else:
                before = "(none)" if c["before"] is None else c["before"]
                after = "(none)" if c["after"] is None else c["after"]
                out.append(f"    {c['label']}: {before} -> {after}")
    return out


def fleet_lines(status: FleetStatus, *, top: int | None, runs_read: bool) -> list[str]:
    """`eams fleet status`: the counts per state, then the districts worst first."""
    counts = ", ".join(f"{k} {v}" for k, v in status.counts.items())
    out = [
        f"Fleet status at {when(status.generated_at)}: {status.needs_attention} of "
        f"{status.districts} districts need attention",
        f"  {counts}",
    ]
    if not runs_read:
        out.append("  (failed runs not read: DAGSTER_HOME is not set)")
    ranked = status.ranked if top is None else status.ranked[:top]
    if not ranked:
        return out
    rows = [("#", "DISTRICT", "STATE", "DETAIL", "KEY")]
    for i, d in enumerate(ranked, 1):
        for j, a in enumerate(d.attention):
            first = j == 0
            key = a.key or ""
            if a.run_id and a.run_id != key:
                key = f"{key} (run {a.run_id})"
            rows.append((str(i) if first else "", d.code if first else "", a.state, a.detail, key))
    widths = [max(len(str(row[c])) for row in rows) for c in range(4)]
    out.append("")
    for row in rows:
        cells = [str(v).ljust(w) for v, w in zip(row[:4], widths, strict=True)]
        out.append("  ".join([*cells, row[4]]).rstrip())
    return out


class TerminalProgress(Progress):
    """rich on stderr: a line per finished step with its duration, and a live bar while
    passwords are hashed (done/total, rate, ETA). rich is imported only on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True)
        self._bar: Any = None
        self._task: Any = None
        self._began: float | None = None

    def advanced(self, step: str, done: int, total: int) -> None:
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(f"{step}: passwords", total=total, rate="")
            self._began = time.monotonic()
        elapsed = time.monotonic() - (self._began or time.monotonic())
        rate = f"{done / elapsed:,.1f}/s" if elapsed > 0 and done else ""
        self._bar.update(self._task, completed=done, total=total, rate=rate)
        if done >= total:
            self._stop()
            self._console.print(describe_advance(step, done, total, elapsed), highlight=False)

    def finished(self, step: str, seconds: float) -> None:
        self._stop()
        self._console.print(f"{step} done in {seconds:.2f} s", highlight=False)

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def close(self) -> None:
        self._stop()
