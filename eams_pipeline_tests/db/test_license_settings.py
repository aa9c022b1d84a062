"""The districts' license settings and figures as the database keeps them: the master
data's `low_licenses` and `account_managers`, and each order's licenses (the one query of
`eams export licenses`, which the emails show)."""

from __future__ import annotations

import psycopg

from eams_pipeline.db.districts import get_district
from eams_pipeline.db.export import export_licenses, order_licenses
from eams_pipeline.db.fleet_facts import district_facts
from eams_pipeline_tests.builders import district_doc, existing_student, load


def test_the_database_holds_what_was_loaded(conn: psycopg.Connection) -> None:
    load(conn, district_doc(code="D1") | {"low_licenses": 7, "account_managers": ["a@v.example"]})
    d = get_district(conn, "D1")
    assert d is not None and d.low_licenses == 7 and d.account_managers == ("a@v.example",)
    load(conn, district_doc(code="D1"))  # left out: back to the defaults
    d = get_district(conn, "D1")
    assert d is not None and d.low_licenses is None and d.account_managers == ()


def test_the_email_figures_are_the_exports(conn: psycopg.Connection) -> None:
    existing = [existing_student("E1"), existing_student("R1", order="REG-D1")]
    load(conn, district_doc(code="D1", licenses=10, regular_licenses=4, existing=existing))
    orders = order_licenses(conn, "D1")
    assert [(o.number, o.kind, o.school_code, o.total, o.used, o.available) for o in orders] == [
        tuple(r) for r in export_licenses(conn, "D1")
    ]
    assert [(o.number, o.enterprise, o.used, o.available) for o in orders] == [
        ("ENT-D1", True, 1, 9),
        ("REG-D1", False, 1, 3),
    ]


def test_the_fleet_reads_the_districts_low_licenses(conn: psycopg.Connection) -> None:
    load(conn, district_doc(code="D1", licenses=10) | {"low_licenses": 10})
    load(conn, district_doc(code="D2", licenses=10))
    [d1, d2] = district_facts(conn)
    assert (d1.code, d1.low_licenses, d1.licenses, d1.licenses_used) == ("D1", 10, 10, 0)
    assert (d2.code, d2.low_licenses) == ("D2", None)
