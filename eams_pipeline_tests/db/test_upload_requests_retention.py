"""Upload requests do not pile up: the ones whose upload has an outcome go after the run
retention period; the others stay."""

from __future__ import annotations

import datetime as dt

import psycopg

from eams_pipeline.db.upload_requests import delete_handled_requests, record_sensor_request
from eams_pipeline_tests import builders

OLD = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
CUTOFF = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _upload(conn: psycopg.Connection, key: str, status: str) -> None:
    conn.execute(
        """INSERT INTO uploads (district_id, upload_key, file_name, received_at, status,
                                applied_at, checked_as)
           SELECT district_id, %s, 'students.csv', now(), %s,
                  CASE WHEN %s::text = 'processed' THEN now() END,
                  CASE WHEN %s::text = 'checked' THEN 'processed' END
           FROM districts WHERE code = 'D001'""",
        (key, status, status, status),
    )


def _request(conn: psycopg.Connection, key: str, at: dt.datetime) -> None:
    assert record_sensor_request(conn, "D001", key, 10, 1)
    conn.execute("UPDATE upload_requests SET requested_at = %s WHERE upload_key = %s", (at, key))


def _left(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute("SELECT upload_key FROM upload_requests ORDER BY upload_key").fetchall()
    return [r[0] for r in rows]


def test_old_requests_of_uploads_with_an_outcome_go_the_others_stay(
    conn: psycopg.Connection,
) -> None:
    builders.load(conn, builders.district_doc(code="D001"))
    done, checked, crashed, never, recent = (
        f"D001-2026011{i}T000000000000Z" for i in range(5)
    )
    _upload(conn, done, "processed")
    _upload(conn, checked, "checked")
    _upload(conn, crashed, "received")  # a run died before recording an outcome
    _upload(conn, recent, "processed")
    for key in (done, checked, crashed, never):  # `never`: no uploads row at all
        _request(conn, key, OLD)
    _request(conn, recent, CUTOFF + dt.timedelta(days=1))
    conn.commit()

    assert delete_handled_requests(conn, CUTOFF, dry_run=True) == 2
    assert _left(conn) == [done, checked, crashed, never, recent]  # a dry run deletes nothing

    assert delete_handled_requests(conn, CUTOFF) == 2
    conn.commit()
    assert _left(conn) == [crashed, never, recent]
    assert delete_handled_requests(conn, CUTOFF) == 0  # again: nothing more
