"""What `eams export` shows: a district's students and its license counters."""

from __future__ import annotations

import psycopg

from eams_pipeline.core.licenses import ENTERPRISE, REGULAR, OrderLicenses
from eams_pipeline.core.template import HEADER

STUDENT_EXPORT_HEADER = (*(h for h in HEADER if h not in ("Password", "Status")), "Status", "Order")
LICENSE_EXPORT_HEADER = ("Order", "Kind", "School Code", "Licenses", "Used", "Available")


def export_students(conn: psycopg.Connection, district_code: str) -> list[tuple]:
    return conn.execute(
        """SELECT sc.code, s.student_id, s.last_name, s.first_name, s.middle_name, s.grade,
                  s.username, s.email, s.class_name, s.status, o.number
           FROM students s
           JOIN districts d ON d.district_id = s.district_id
           JOIN schools sc ON sc.school_id = s.school_id
           JOIN orders o ON o.order_id = s.order_id
           WHERE d.code = %s
           ORDER BY s.student_id""",
        (district_code,),
    ).fetchall()


def export_licenses(conn: psycopg.Connection, district_code: str) -> list[tuple]:
    """Every order of the district, the Enterprise order first: LICENSE_EXPORT_HEADER."""
    return conn.execute(
        """SELECT o.number,
                  CASE WHEN o.order_id = d.enterprise_order_id THEN %s ELSE %s END,
                  sc.code, o.size, o.used, o.size - o.used
           FROM orders o
           JOIN districts d ON d.district_id = o.district_id
           LEFT JOIN schools sc ON sc.school_id = o.school_id
           WHERE d.code = %s
           ORDER BY o.order_id = d.enterprise_order_id DESC, o.number""",
        (ENTERPRISE, REGULAR, district_code),
    ).fetchall()


def order_licenses(conn: psycopg.Connection, district_code: str) -> list[OrderLicenses]:
    """The district's orders as its emails show them: the figures of `eams export
    licenses` (the same query)."""
    return [
        OrderLicenses(number=number, kind=kind, total=size, used=used, school_code=school)
        for number, kind, school, size, used, _ in export_licenses(conn, district_code)
    ]


def district_exists(conn: psycopg.Connection, district_code: str) -> bool:
    row = conn.execute("SELECT 1 FROM districts WHERE code = %s", (district_code,)).fetchone()
    return row is not None
