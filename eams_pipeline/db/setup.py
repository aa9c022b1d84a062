"""`eams setup load`: write master data. Loading the same file twice changes nothing;
a changed file updates what changed (license counts, schools added or closed, contacts).

Students listed under `existing_students` are created when absent and never overwritten:
once a student exists, the district's uploads own its data.
"""

from __future__ import annotations

import json

import pandas as pd
import psycopg

from eams_pipeline.core.fingerprints import data_fingerprint
from eams_pipeline.core.master_data import DistrictSpec, MasterDataError, OrderSpec
from eams_pipeline.core.validation import normalise


def load_master_data(conn: psycopg.Connection, districts: list[DistrictSpec]) -> dict[str, int]:
    """Upsert every district in one transaction; returns how many rows each table changed."""
    changed = {"districts": 0, "schools": 0, "orders": 0, "students": 0}
    with conn.transaction():
        for spec in districts:
            for table, n in _load_district(conn, spec).items():
                changed[table] += n
    return changed


def _load_district(conn: psycopg.Connection, d: DistrictSpec) -> dict[str, int]:
    s = d.sftp
    row = conn.execute(
        """
        INSERT INTO districts (code, name, timezone, contacts, process_at, sftp_host, sftp_port,
                               sftp_username, sftp_password_env, sftp_private_key_file,
                               sftp_host_key, sftp_root, encoding, grades, expected_by,
                               failure_contacts, guard, mode)
        VALUES (%(code)s, %(name)s, %(tz)s, %(contacts)s, %(at)s, %(host)s, %(port)s, %(user)s,
                %(pw)s, %(key)s, %(hk)s, %(root)s, %(encoding)s, %(grades)s, %(expected_by)s,
                %(failure_contacts)s, %(guard)s, %(mode)s)
        ON CONFLICT (code) DO UPDATE SET
            encoding = EXCLUDED.encoding, grades = EXCLUDED.grades,
            expected_by = EXCLUDED.expected_by, failure_contacts = EXCLUDED.failure_contacts,
            name = EXCLUDED.name, timezone = EXCLUDED.timezone, contacts = EXCLUDED.contacts,
            process_at = EXCLUDED.process_at, sftp_host = EXCLUDED.sftp_host,
            sftp_port = EXCLUDED.sftp_port, sftp_username = EXCLUDED.sftp_username,
            sftp_password_env = EXCLUDED.sftp_password_env,
            sftp_private_key_file = EXCLUDED.sftp_private_key_file,
            sftp_host_key = EXCLUDED.sftp_host_key, sftp_root = EXCLUDED.sftp_root,
            guard = EXCLUDED.guard, mode = EXCLUDED.mode,
            updated_at = now()
        WHERE (districts.name, districts.timezone, districts.contacts, districts.process_at,
               districts.sftp_host, districts.sftp_port, districts.sftp_username,
               districts.sftp_password_env, districts.sftp_private_key_file,
               districts.sftp_host_key, districts.sftp_root, districts.encoding,
               districts.grades, districts.expected_by, districts.failure_contacts,
               districts.guard, districts.mode)
          IS DISTINCT FROM
              (EXCLUDED.name, EXCLUDED.timezone, EXCLUDED.contacts, EXCLUDED.process_at,
               EXCLUDED.sftp_host, EXCLUDED.sftp_port, EXCLUDED.sftp_username,
               EXCLUDED.sftp_password_env, EXCLUDED.sftp_private_key_file,
               EXCLUDED.sftp_host_key, EXCLUDED.sftp_root, EXCLUDED.encoding,
               EXCLUDED.grades, EXCLUDED.expected_by, EXCLUDED.failure_contacts,
               EXCLUDED.guard, EXCLUDED.mode)
        RETURNING district_id
        """,
        {
            "code": d.code,
            "name": d.name,
            "tz": d.timezone,
            "contacts": list(d.contacts),
            "at": d.process_at,
            "host": s.host if s else None,
            "port": s.port if s else 22,
            "user": s.username if s else None,
            "pw": s.password_env if s else None,
            "key": s.private_key_file if s else None,
            "hk": s.host_key if s else None,
            "root": s.root if s else "/",
            "encoding": d.encoding,
            "grades": list(d.grades) if d.grades is not None else None,
            "expected_by": d.expected_by,
            "failure_contacts": list(d.failure_contacts),
            "guard": json.dumps(d.guard) if d.guard is not None else None,
            "mode": d.mode,
        },
    ).fetchone()
    changed = {"districts": 1 if row else 0}
    district_id = conn.execute(
        "SELECT district_id FROM districts WHERE code = %s FOR UPDATE", (d.code,)
    ).fetchone()[0]

    changed["schools"] = 0
    for school in d.schools:
        cur = conn.execute(
            """INSERT INTO schools (district_id, code, name, active) VALUES (%s, %s, %s, %s)
               ON CONFLICT (district_id, code) DO UPDATE
                   SET name = EXCLUDED.name, active = EXCLUDED.active
                   WHERE (schools.name, schools.active) IS DISTINCT FROM
                         (EXCLUDED.name, EXCLUDED.active)""",
            (district_id, school.code, school.name, school.active),
        )
        changed["schools"] += cur.rowcount

    changed["orders"] = 0
    orders = [(d.enterprise_order, "enterprise")] + [(o, "regular") for o in d.regular_orders]
    _check_orders(conn, district_id, d, [order for order, _ in orders])
    for order, kind in orders:
        cur = conn.execute(
            """INSERT INTO orders (district_id, number, kind, school_id, size)
               SELECT %(d)s, %(n)s, %(k)s, s.school_id, %(size)s
               FROM (SELECT 1) one
               LEFT JOIN schools s ON s.district_id = %(d)s AND s.code = %(school)s
               ON CONFLICT (number) DO UPDATE
                   SET size = EXCLUDED.size, school_id = EXCLUDED.school_id
                   WHERE orders.district_id = EXCLUDED.district_id
                     AND (orders.size, orders.school_id) IS DISTINCT FROM
                         (EXCLUDED.size, EXCLUDED.school_id)""",
            {
                "d": district_id,
                "n": order.number,
                "k": kind,
                "size": order.licenses,
                "school": order.school,
            },
        )
        changed["orders"] += cur.rowcount
    cur = conn.execute(
        """UPDATE districts d
           SET enterprise_order_id = o.order_id, holding_bin_school_id = s.school_id
           FROM orders o, schools s
           WHERE d.district_id = %(d)s AND o.number = %(n)s AND o.district_id = %(d)s
             AND s.district_id = %(d)s AND s.code = %(bin)s
             AND (d.enterprise_order_id, d.holding_bin_school_id)
                 IS DISTINCT FROM (o.order_id, s.school_id)""",
        {"d": district_id, "n": d.enterprise_order.number, "bin": d.holding_bin_school},
    )
    changed["districts"] = max(changed["districts"], cur.rowcount)
    changed["students"] = _load_existing_students(conn, district_id, d)
    return changed


def _check_orders(
    conn: psycopg.Connection, district_id: int, d: DistrictSpec, orders: list[OrderSpec]
) -> None:
    """Order numbers are unique across districts, and an order never has fewer licenses than
    its active students use: refuse, in words, what the database would refuse in its own."""
    numbers = [o.number for o in orders]
    for number, owner, owner_name in conn.execute(
        """SELECT o.number, od.code, od.name FROM orders o
           JOIN districts od ON od.district_id = o.district_id
           WHERE o.number = ANY(%s) AND o.district_id <> %s ORDER BY o.number""",
        (numbers, district_id),
    ).fetchall():
        raise MasterDataError(
            f"district {d.code}: order {number} belongs to district {owner} ({owner_name}); "
            "an order number can belong to one district only"
        )
    used = dict(
        conn.execute(
            "SELECT number, used FROM orders WHERE district_id = %s AND number = ANY(%s)",
            (district_id, numbers),
        ).fetchall()
    )
    for order in orders:
        in_use = used.get(order.number, 0)
        if order.licenses < in_use:
            raise MasterDataError(
                f"district {d.code}: order {order.number}: {order.licenses} licenses requested "
                f"but {in_use} are in use by active students; deactivate students first or "
                f"keep at least {in_use}"
            )


def _load_existing_students(conn: psycopg.Connection, district_id: int, d: DistrictSpec) -> int:
    if not d.existing_students:
        return 0
    frame = pd.DataFrame(
        [
            {
                "school_code": s.school,
                "student_id": s.student_id,
                "last_name": s.last_name,
                "first_name": s.first_name,
                "middle_name": s.middle_name,
                "grade": s.grade,
                "username": s.username,
                "email": s.email,
                "class_name": s.class_name,
                "status": "A",
                "order": s.order or d.enterprise_order.number,
                "state": s.status,
            }
            for s in d.existing_students
        ]
    ).astype("str")
    frame = normalise(frame)
    frame["data_hash"] = data_fingerprint(frame)
    inserted = 0
    frame = frame.astype(object).where(frame.notna(), None)
    for r in frame.itertuples(index=False):  # master data: a handful of rows
        cur = conn.execute(
            """INSERT INTO students (district_id, student_id, school_id, last_name, first_name,
                   middle_name, grade, username, email, class_name, status, order_id, data_hash)
               SELECT %(d)s, %(sid)s, s.school_id, %(ln)s, %(fn)s, %(mn)s, %(g)s, %(u)s, %(e)s,
                      %(c)s, %(st)s, o.order_id, %(h)s
               FROM schools s, orders o
               WHERE s.district_id = %(d)s AND s.code = %(sc)s
                 AND o.district_id = %(d)s AND o.number = %(o)s
               ON CONFLICT (district_id, student_id) DO NOTHING""",
            {
                "d": district_id,
                "sid": r.student_id,
                "ln": r.last_name,
                "fn": r.first_name,
                "mn": r.middle_name,
                "g": r.grade,
                "u": r.username,
                "e": r.email,
                "c": r.class_name,
                "st": r.state,
                "h": int(r.data_hash),
                "sc": r.school_code,
                "o": r.order,
            },
        )
        inserted += cur.rowcount
    if inserted:
        recount_licenses(conn, district_id)
    return inserted


def recount_licenses(conn: psycopg.Connection, district_id: int) -> None:
    """used = active students on the order, for every order of the district."""
    conn.execute(
        """UPDATE orders o SET used = c.n
           FROM (SELECT o2.order_id, count(st.student_pk) AS n
                 FROM orders o2
                 LEFT JOIN students st ON st.order_id = o2.order_id AND st.status = 'active'
                 WHERE o2.district_id = %s GROUP BY o2.order_id) c
           WHERE o.order_id = c.order_id AND o.used <> c.n""",
        (district_id,),
    )
