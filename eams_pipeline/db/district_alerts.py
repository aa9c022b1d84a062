"""district_alerts: the alerts sent about a district (to it, or to the operators), one row
each, so each goes out once."""

from __future__ import annotations

import datetime as dt

import psycopg


def alerted(conn: psycopg.Connection, district_id: int, kind: str) -> set[str]:
    """The subjects already alerted for a district and kind."""
    rows = conn.execute(
        "SELECT subject FROM district_alerts WHERE district_id = %s AND kind = %s",
        (district_id, kind),
    ).fetchall()
    return {r[0] for r in rows}


def alerted_among(
    conn: psycopg.Connection, district_id: int, kind: str, subjects: list[str]
) -> set[str]:
    """Which of ``subjects`` are already alerted for a district and kind (one probe each)."""
    rows = conn.execute(
        """SELECT subject FROM district_alerts
           WHERE district_id = %s AND kind = %s AND subject = ANY(%s)""",
        (district_id, kind, subjects),
    ).fetchall()
    return {r[0] for r in rows}


def record_alerts(
    conn: psycopg.Connection, district_id: int, kind: str, subjects: list[str], detail: str
) -> None:
    """Record several alerts of one kind at once (those already recorded are left as they
    are): e.g. the stray files a digest reported, in the transaction that sends it."""
    conn.execute(
        """INSERT INTO district_alerts (district_id, kind, subject, detail)
           SELECT %s, %s, subject, %s FROM unnest(%s::text[]) AS s(subject)
           ON CONFLICT DO NOTHING""",
        (district_id, kind, detail, subjects),
    )


def claim_alert(
    conn: psycopg.Connection, district_id: int, kind: str, subject: str, detail: str
) -> bool:
    """Record an alert; False when it was already recorded (then it must not be sent).

    Call it in the transaction that sends the alert: when sending fails, the rollback
    leaves the alert unrecorded and the next tick tries again.
    """
    cur = conn.execute(
        """INSERT INTO district_alerts (district_id, kind, subject, detail)
           VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""",
        (district_id, kind, subject, detail),
    )
    return cur.rowcount == 1


def last_received(conn: psycopg.Connection, district_id: int) -> dt.datetime | None:
    """When the district's newest upload was received (None: never); a check drop is no
    upload."""
    return conn.execute(
        "SELECT max(received_at) FROM uploads WHERE district_id = %s AND status <> 'checked'",
        (district_id,),
    ).fetchone()[0]
