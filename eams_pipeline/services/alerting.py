"""The alerts about a district's SFTP site, sent by its sensor: nothing arrived by the time
the district expects it (missing upload), or files that are not ``students.csv`` settled in
``incoming/`` (one digest a day). Which alert is due is decided in
:mod:`eams_pipeline.core.alert_rules`; this use case looks up what it needs, sends each
alert once and records it in ``district_alerts`` in the transaction that sends it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import psycopg

from eams_pipeline.config import operator_emails
from eams_pipeline.core.alert_rules import (
    DIGEST_LIST,
    MISNAMED_DIGEST,
    MISNAMED_FILE,
    MISSING_UPLOAD,
    local_day,
    mark_reported,
    misnamed_subject,
    missing_upload,
    settled_stray,
    stray,
    unreported,
)
from eams_pipeline.core.names import UPLOAD_NAME
from eams_pipeline.core.notifications import build_missing_upload_email, build_stray_files_email
from eams_pipeline.core.remote_files import RemoteFile
from eams_pipeline.core.settle import Other, SensorState, listed
from eams_pipeline.db import district_alerts as db_alerts
from eams_pipeline.db.districts import District


class Mailer(Protocol):
    """What sends an email: the SMTP resource in Dagster."""

    sender: str

    def send(self, message: EmailMessage) -> None: ...


class Log(Protocol):
    def error(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


@dataclass
class AlertsSent:
    """What a tick's alerts leave: lines for its reason and what the cursor remembers."""

    notes: list[str]
    others: dict[str, Other]
    digest_day: str | None


def send_district_alerts(
    connect: Callable[[], psycopg.Connection],
    mailer: Mailer,
    log: Log,
    district: District,
    now: dt.datetime,
    files: Sequence[RemoteFile],
    state: SensorState,
    settle_window: float,
    *,
    file_waiting: bool,
) -> AlertsSent:
    """Send the missing-upload alert and the stray-file digest due now, each once (recorded
    in district_alerts in the transaction that sends it). ``state.others``: the stray files
    tracked as of this tick.

    An alert that cannot be sent (SMTP down) is logged and tried again next tick; it never
    keeps the sensor from requesting a run.
    """
    notes: list[str] = []
    others, digest_day = state.others, state.digest_day
    today = local_day(now, district.timezone)
    settled = settled_stray(files, others, now, settle_window)
    new = unreported(settled, others)
    strays = stray(files)
    if new and digest_day == today:
        notes.append(f"{_stray_text(strays)}; today's digest was sent: the next one tomorrow")
        new = []
    # Nothing to look up unless an alert could be due: no expected_by, or not yet its time,
    # and no new stray file settled (the usual tick) need no database at all.
    could_miss = (
        missing_upload(
            now,
            expected_by=district.expected_by,
            timezone=district.timezone,
            last_received=None,
            file_waiting=file_waiting,
            pauses=district.pauses,
        )
        is not None
    )
    if not could_miss and not new:
        return AlertsSent(notes, others, digest_day)
    with connect() as conn:
        missing = missing_upload(
            now,
            expected_by=district.expected_by,
            timezone=district.timezone,
            last_received=db_alerts.last_received(conn, district.district_id),
            file_waiting=file_waiting,
            alerted=db_alerts.alerted(conn, district.district_id, MISSING_UPLOAD),
            pauses=district.pauses,
        )
        if new:
            # reported already (a reset cursor, a reload, another shard layout): not again
            known = db_alerts.alerted_among(
                conn,
                district.district_id,
                MISNAMED_FILE,
                [misnamed_subject(f.name, f.size) for f in new],
            )
            others = mark_reported(
                others, [f for f in new if misnamed_subject(f.name, f.size) in known]
            )
            new = unreported(new, others)
            if new and db_alerts.alerted_among(
                conn, district.district_id, MISNAMED_DIGEST, [today]
            ):
                digest_day, new = today, []
                notes.append(f"{_stray_text(strays)}; today's digest was sent already")
        conn.rollback()
        if missing is not None:
            text = (
                f"MISSING UPLOAD: no {UPLOAD_NAME} received since {missing.since.isoformat()} "
                f"(expected by {missing.due.isoformat()})"
            )
        if missing is not None and missing.already_alerted:
            notes.append(f"{text} (already alerted)")
        elif missing is not None:
            message = build_missing_upload_email(
                district_code=district.code,
                district_name=district.name,
                contacts=list(district.contacts),
                operators=operator_emails(),
                sender=mailer.sender,
                due=missing.due,
                since=missing.since,
                last_received=missing.last_received,
            )
            notes.append(
                _send_once(
                    log, conn, mailer, district, MISSING_UPLOAD, missing.subject, text, message
                )[0]
            )
        if new and not district.contacts:
            notes.append(f"{_stray_text(strays)}; the district has no contacts to tell")
            digest_day = today  # looked at again tomorrow
        elif new:
            # new files first, then the others already reported, DIGEST_LIST at most
            listed_files = [*new, *(f for f in settled if f not in new)][:DIGEST_LIST]
            message = build_stray_files_email(
                district_code=district.code,
                district_name=district.name,
                contacts=list(district.contacts),
                sender=mailer.sender,
                files=[(f.shown, f.size) for f in listed_files],
                more=len(strays) - len(listed_files),
            )
            text = _stray_text(strays)
            subjects = [misnamed_subject(f.name, f.size) for f in settled]
            note, recorded = _send_once(
                log,
                conn,
                mailer,
                district,
                MISNAMED_DIGEST,
                today,
                text,
                message,
                record=lambda: db_alerts.record_alerts(
                    conn, district.district_id, MISNAMED_FILE, subjects, f"digest of {today}"
                ),
            )
            notes.append(note)
            if recorded:
                others, digest_day = mark_reported(others, settled), today
    return AlertsSent(notes, others, digest_day)


def _stray_text(strays: Sequence[RemoteFile]) -> str:
    noun = "file" if len(strays) == 1 else "files"
    names = listed([f.name for f in strays], 3)
    return f"MISNAMED FILES: {len(strays)} {noun} in incoming/ not {UPLOAD_NAME}: {names}"


def _send_once(
    log: Log,
    conn: psycopg.Connection,
    mailer: Mailer,
    district: District,
    kind: str,
    subject: str,
    text: str,
    message: EmailMessage,
    record: Callable[[], None] | None = None,
) -> tuple[str, bool]:
    """Send an alert unless it is recorded already; ``record`` writes more rows in the same
    transaction. Returns the tick's line and whether the alert is recorded now."""
    try:
        with conn.transaction():
            if not db_alerts.claim_alert(conn, district.district_id, kind, subject, text):
                return f"{text} (already alerted)", True
            if record is not None:
                record()
            mailer.send(message)
    except Exception as exc:  # an alert must never keep the sensor from requesting runs
        log.error(f"{text}: the alert could not be sent, retrying next tick: {exc}")
        return f"{text}; alert NOT sent ({type(exc).__name__}), retrying next tick", False
    recipients = message.get_all("To", []) + message.get_all("Cc", [])
    log.warning(f"{text}: emailed {', '.join(recipients)}")
    return f"{text}; emailed {', '.join(recipients)}", True
