"""A district's pauses as `eams setup load` stores them (districts.pauses) and the pipeline
reads them back: in date order; the same pauses again change nothing, other pauses (or
none) replace them."""

from __future__ import annotations

import datetime as dt

import psycopg
import yaml

from eams_pipeline.core.master_data import parse_master_data
from eams_pipeline.core.pauses import Pause
from eams_pipeline.db.districts import get_district
from eams_pipeline.db.setup import load_master_data
from eams_pipeline_tests.builders import district_doc, load

D = dt.date
WINTER = {"from": D(2026, 12, 21), "to": D(2027, 1, 1)}
SUMMER = {"from": D(2026, 6, 15), "to": D(2026, 8, 20)}


def _changed(conn: psycopg.Connection, pauses: list[dict] | None) -> int:
    doc = district_doc() | ({"pauses": pauses} if pauses is not None else {})
    text = yaml.safe_dump({"districts": [doc]})
    return load_master_data(conn, parse_master_data(text))["districts"]


def test_pauses_are_stored_read_back_and_replaced(conn: psycopg.Connection) -> None:
    load(conn, district_doc())
    assert get_district(conn, "D1").pauses == ()
    assert _changed(conn, [WINTER, SUMMER]) == 1
    assert get_district(conn, "D1").pauses == (
        Pause(SUMMER["from"], SUMMER["to"]),
        Pause(WINTER["from"], WINTER["to"]),
    )
    assert conn.execute("SELECT pauses FROM districts WHERE code = 'D1'").fetchone()[0] == [
        {"from": "2026-06-15", "to": "2026-08-20"},
        {"from": "2026-12-21", "to": "2027-01-01"},
    ]
    assert _changed(conn, [SUMMER, WINTER]) == 0  # the same pauses, in another order
    assert _changed(conn, [SUMMER]) == 1
    assert get_district(conn, "D1").pauses == (Pause(SUMMER["from"], SUMMER["to"]),)
    assert _changed(conn, None) == 1  # the key left out: no pauses any more
    assert get_district(conn, "D1").pauses == ()
