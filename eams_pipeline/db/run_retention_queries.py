"""What the retention of Dagster runs asks the MY Access database (core.run_retention)."""

from __future__ import annotations

from collections.abc import Collection

import psycopg

from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.core.run_retention import KEEP_UPLOAD_STATUSES


def pending_upload_keys(conn: psycopg.Connection, keys: Collection[str]) -> set[str]:
    """Of ``keys``, the uploads whose runs must stay: held or received, or superseded while
    held (still approvable, see db.uploads.UploadRow.approvable). One query for the batch;
    a key that is no upload (a district partition key) matches nothing."""
    if not keys:
        return set()
    rows = conn.execute(
        """SELECT upload_key FROM uploads
           WHERE upload_key = ANY(%s)
             AND (status = ANY(%s) OR (status = %s AND guard_trip IS NOT NULL))""",
        (
            list(keys),
            sorted(str(s) for s in KEEP_UPLOAD_STATUSES),
            str(UploadStatus.SUPERSEDED),
        ),
    ).fetchall()
    return {r[0] for r in rows}
