"""What the fleet status reads of the MY Access database: one query over all districts."""

from __future__ import annotations

import psycopg

from eams_pipeline.core.fleet_ranking import DistrictFacts, LastUpload
from eams_pipeline.core.outcome import APPLIED_STATUSES, UploadStatus

# uploads whose errors/rows say how the district's files go (not rejected: every row is an
# error; not received: no counts yet; not a check drop: not a night's file). Check drops
# are no uploads: the fleet reads none of them.
UNRATED_STATUSES = (UploadStatus.RECEIVED, UploadStatus.REJECTED, UploadStatus.CHECKED)

# Each LATERAL walks uploads_district_received_idx of one district from its newest upload
# and stops at the first rows it needs; held uploads come from uploads_held_idx (sql/020).
_FACTS = """
SELECT d.code, d.name, d.timezone, d.expected_by, d.created_at,
       last.upload_key, last.status, last.received_at, last.error_codes,
       applied.received_at,
       held.n, held.upload_key, held.received_at, held.rule,
       rated.rates, rated.upload_key,
       o.number, o.size, o.used, d.low_licenses
FROM districts d
LEFT JOIN LATERAL (
    SELECT u.upload_key, u.status, u.received_at, u.error_codes FROM uploads u
    WHERE u.district_id = d.district_id AND u.status <> 'checked'
    ORDER BY u.received_at DESC, u.upload_id DESC LIMIT 1
) last ON true
LEFT JOIN LATERAL (
    SELECT u.received_at FROM uploads u
    WHERE u.district_id = d.district_id AND u.status = ANY(%(applied)s)
    ORDER BY u.received_at DESC LIMIT 1
) applied ON true
LEFT JOIN (
    SELECT DISTINCT ON (u.district_id) u.district_id,
           count(*) OVER (PARTITION BY u.district_id) AS n,
           u.upload_key, u.received_at, u.guard_trip ->> 'rule' AS rule
    FROM uploads u WHERE u.status = 'held'
    ORDER BY u.district_id, u.received_at, u.upload_id
) held ON held.district_id = d.district_id
LEFT JOIN LATERAL (
    SELECT array_agg(r.rate ORDER BY r.received_at DESC) AS rates,
           (array_agg(r.upload_key ORDER BY r.received_at DESC))[1] AS upload_key
    FROM (
        SELECT u.upload_key, u.received_at, u.errors::float8 / u.rows AS rate FROM uploads u
        WHERE u.district_id = d.district_id AND u.rows > 0 AND u.status <> ALL(%(unrated)s)
        ORDER BY u.received_at DESC LIMIT %(rated)s
    ) r
) rated ON true
LEFT JOIN orders o ON o.order_id = d.enterprise_order_id
ORDER BY d.code
"""


def district_facts(conn: psycopg.Connection, rated: int = 6) -> list[DistrictFacts]:
    """Every district's facts for core.fleet_ranking (``rated``: the newest accepted uploads whose
    error rates are read, the last one and its baseline)."""
    return [_facts(r) for r in conn.execute(_FACTS, query_params(rated)).fetchall()]


def query_params(rated: int = 6) -> dict[str, object]:
    return {
        "applied": sorted(str(s) for s in APPLIED_STATUSES),
        "unrated": [str(s) for s in UNRATED_STATUSES],
        "rated": rated,
    }


def _facts(r: tuple) -> DistrictFacts:
    code, name, timezone, expected_by, created_at = r[0:5]
    last_key, last_status, last_received, error_codes = r[5:9]
    last_applied = r[9]
    held, held_key, held_at, held_rule = r[10:14]
    rates, rate_key = r[14:16]
    order, size, used, low_licenses = r[16:20]
    last = None
    if last_key is not None:
        last = LastUpload(
            key=last_key,
            status=UploadStatus(last_status),
            received_at=last_received,
            error_codes=error_codes or {},
        )
    return DistrictFacts(
        code=code,
        name=name,
        timezone=timezone or "UTC",
        expected_by=expected_by,
        created_at=created_at,
        last_upload=last,
        last_received_at=last_received,
        last_applied_at=last_applied,
        held=int(held or 0),
        oldest_held_key=held_key,
        oldest_held_at=held_at,
        oldest_held_rule=held_rule,
        error_rates=tuple(rates or ()),
        error_rate_key=rate_key,
        enterprise_order=order,
        licenses=size,
        licenses_used=used,
        low_licenses=low_licenses,
    )
