"""Test data: districts as master data, students.csv files, and reading state back."""

from __future__ import annotations

import csv
import io
from typing import Any

import psycopg
import yaml

from eams_pipeline import config
from eams_pipeline.core.master_data import parse_master_data
from eams_pipeline.core.outcome import UploadResult
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.core.template import COLUMNS, HEADER
from eams_pipeline.db.setup import load_master_data
from eams_pipeline.services.process import Engine, Upload, process_upload

ENTERPRISE, REGULAR, BIN = "ENT-D1", "REG-D1", "D1-HB"


def district_doc(
    *,
    code: str = "D1",
    licenses: int = 100,
    regular_licenses: int = 50,
    existing: list[dict[str, Any]] | None = None,
    closed_school: bool = True,
    guard: Any = "off",
    mode: str | None = None,
) -> dict[str, Any]:
    """A district with schools 101, 102, a closed 900 and the bin; one regular order.

    The change guard is off unless `guard` says otherwise (None: the README's defaults):
    the engine's tests change most of their few students on purpose; core/test_guard.py tests it.
    """
    schools = [
        {"code": f"{code}-HB", "name": "Enterprise Holding Bin School"},
        {"code": "101", "name": "Lincoln Elementary"},
        {"code": "102", "name": "Roosevelt Middle"},
    ]
    if closed_school:
        schools.append({"code": "900", "name": "Closed School", "active": False})
    return {
        "code": code,
        "name": f"District {code}",
        "timezone": "America/Chicago",
        "contacts": [f"admin@{code.lower()}.example.org"],
        "holding_bin_school": f"{code}-HB",
        "enterprise_order": {"number": f"ENT-{code}", "licenses": licenses},
        "schools": schools,
        "regular_orders": [
            {"number": f"REG-{code}", "school": "101", "licenses": regular_licenses}
        ],
        "existing_students": existing or [],
        **({"guard": guard} if guard is not None else {}),
        **({"mode": mode} if mode is not None else {}),
    }


def existing_student(
    student_id: str, *, status: str = "active", order: str = "ENT-D1", **data: Any
) -> dict[str, Any]:
    base = {
        "student_id": student_id,
        "school": "101",
        "last_name": "Last" + student_id,
        "first_name": "First",
        "grade": "5",
        "username": "user" + student_id,
        "order": order,
        "status": status,
    }
    base.update(data)
    return base


def load(conn: psycopg.Connection, *districts: dict[str, Any]) -> None:
    text = yaml.safe_dump({"districts": list(districts)})
    load_master_data(conn, parse_master_data(text))


def row(student_id: str, status: str = "A", **values: str) -> dict[str, str]:
    """A valid template row for a new student; override any column by internal name."""
    base = {
        "school_code": "101",
        "student_id": student_id,
        "last_name": "Last" + student_id,
        "first_name": "First",
        "middle_name": "",
        "grade": "5",
        "username": "user" + student_id,
        "password": "secret-pw",
        "email": "",
        "class_name": "",
        "status": status,
    }
    base.update(values)
    return base


def csv_bytes(rows: list[dict[str, str]], header: tuple[str, ...] = HEADER) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow([r.get(c, "") for c in COLUMNS])
    return out.getvalue().encode("utf-8")


def run(
    conn: psycopg.Connection,
    rows: list[dict[str, str]] | bytes,
    district: str = "D1",
    **kwargs: Any,
) -> UploadResult:
    data = rows if isinstance(rows, bytes) else csv_bytes(rows)
    upload_fields = {k: kwargs.pop(k) for k in _UPLOAD_FIELDS if k in kwargs}
    engine = kwargs.pop("engine", None) or test_engine(kwargs.pop("hasher", None))
    return process_upload(conn, Upload(district, data, **upload_fields), engine, **kwargs)


def baseline(
    conn: psycopg.Connection, student_ids: list[str], district: str = "D1", **kwargs: Any
) -> UploadResult:
    """An applied upload of existing students (`existing_student` defaults), unchanged: the
    change guard holds nothing before a district's first applied upload."""
    result = run(conn, [row(s, password="") for s in student_ids], district, **kwargs)
    assert str(result.status) == "processed" and result.counts["unchanged"] == len(student_ids)
    return result


_UPLOAD_FIELDS = ("file_name", "key", "received_at", "archive_path")


def test_engine(hasher: PasswordHasher | None = None) -> Engine:
    """The engine as the environment configures it (cheap argon2 in the tests)."""
    return Engine(
        secret=config.secret_key(), hasher=hasher or PasswordHasher(config.argon2_settings())
    )


def students(conn: psycopg.Connection, district: str = "D1") -> dict[str, dict[str, Any]]:
    """Student ID -> status, order number, school code and data, as stored."""
    cur = conn.execute(
        """SELECT s.student_id, s.status, o.number, sc.code, s.last_name, s.first_name,
                  s.middle_name, s.grade, s.username, s.email, s.class_name, s.password_hash
           FROM students s JOIN districts d USING (district_id)
           JOIN orders o ON o.order_id = s.order_id JOIN schools sc ON sc.school_id = s.school_id
           WHERE d.code = %s""",
        (district,),
    )
    keys = (
        "status",
        "order",
        "school_code",
        "last_name",
        "first_name",
        "middle_name",
        "grade",
        "username",
        "email",
        "class_name",
        "password_hash",
    )
    return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in cur.fetchall()}


def used(conn: psycopg.Connection, number: str) -> int:
    return conn.execute("SELECT used FROM orders WHERE number = %s", (number,)).fetchone()[0]


def assert_license_invariant(conn: psycopg.Connection) -> None:
    """used = active students on the order, for every order in the database."""
    bad = conn.execute(
        """SELECT o.number, o.used, count(s.student_pk) AS active
           FROM orders o LEFT JOIN students s ON s.order_id = o.order_id AND s.status = 'active'
           GROUP BY o.order_id HAVING o.used <> count(s.student_pk)"""
    ).fetchall()
    assert bad == [], f"orders whose used counter is not the active students on them: {bad}"
