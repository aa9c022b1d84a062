"""`eams setup load`: write master data. Loading the same file twice changes nothing;
a changed file updates what changed (license counts, schools added or closed, contacts).

Students listed under `existing_students` are created when absent and never overwritten:
once a student exists, the district's uploads own its data.

Before anything is written, the whole resulting master data (the file's districts and the
stored districts it leaves as they are) is checked against what the database holds, and
every problem is reported at once (MasterDataError): an SFTP directory of another
district, an order number of another district, licenses below what active students use,
a school left out of the file, the Holding Bin School moved to a school with active
students, a new student's username held by another student.
"""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import psycopg

from eams_pipeline.core.fingerprints import data_fingerprint
from eams_pipeline.core.master_data import (
    AccountUse,
    DistrictSpec,
    MasterDataError,
    Problem,
    new_student_problems,
    sftp_conflict_problems,
)
from eams_pipeline.core.pauses import stored as stored_pauses
from eams_pipeline.core.validation import normalise
from eams_pipeline.db.districts import list_districts
from eams_pipeline.db.usernames import lock_usernames

# one `eams setup load` at a time: its checks read what another load could be writing
_SETUP_LOCK = 0x45414D55


def load_master_data(conn: psycopg.Connection, districts: list[DistrictSpec]) -> dict[str, int]:
    """Check, then upsert every district in one transaction; returns how many rows each
    table changed. MasterDataError (nothing changed) lists every problem found."""
    changed = {"districts": 0, "schools": 0, "orders": 0, "students": 0}
    with conn.transaction():
        check_against_database(conn, districts)
        for spec in districts:
            for table, n in _load_district(conn, spec).items():
                changed[table] += n
    return changed


def check_against_database(conn: psycopg.Connection, districts: list[DistrictSpec]) -> None:
    """MasterDataError listing what the database forbids of these districts. Takes the
    setup lock and the stored districts' rows (uploads hold them while they run) until
    the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
    codes = [d.code for d in districts]
    conn.execute(
        "SELECT district_id FROM districts WHERE code = ANY(%s) ORDER BY code FOR UPDATE",
        (codes,),
    )
    stored = _stored_students(conn, districts)
    problems = [
        *_sftp_problems(conn, districts),
        *_order_problems(conn, districts, stored),
        *_school_problems(conn, districts),
        *_new_student_problems(conn, districts, stored),
    ]
    if problems:
        raise MasterDataError(problems)


def _sftp_problems(conn: psycopg.Connection, districts: list[DistrictSpec]) -> list[Problem]:
    """Two districts on one SFTP directory, among the file's and the stored ones."""
    codes = {d.code for d in districts}
    return sftp_conflict_problems(
        [
            *(
                AccountUse(d.code, d.sftp, f"line {d.line_of('sftp')}", d.line_of("sftp"))
                for d in districts
                if d.sftp is not None
            ),
            *(
                AccountUse(d.code, d.sftp, "in the database")
                for d in list_districts(conn)
                if d.code not in codes and d.sftp is not None
            ),
        ]
    )


def _stored_students(
    conn: psycopg.Connection, districts: list[DistrictSpec]
) -> set[tuple[str, str]]:
    """(district code, Student ID) of the file's existing students already stored."""
    pairs = [(d.code, s.student_id) for d in districts for s in d.existing_students]
    if not pairs:
        return set()
    rows = conn.execute(
        """SELECT d.code, st.student_id
           FROM unnest(%s::text[], %s::text[]) f(code, student_id)
           JOIN districts d ON d.code = f.code
           JOIN students st ON st.district_id = d.district_id AND st.student_id = f.student_id""",
        ([c for c, _ in pairs], [s for _, s in pairs]),
    ).fetchall()
    return set(rows)


def _order_problems(
    conn: psycopg.Connection, districts: list[DistrictSpec], known: set[tuple[str, str]]
) -> list[Problem]:
    """An order number of another district; licenses below what the order's active
    students (stored, and new under existing_students) would use."""
    problems = []
    numbers = [o.number for d in districts for o in (d.enterprise_order, *d.regular_orders)]
    stored = {
        number: (code, name, used)
        for number, code, name, used in conn.execute(
            """SELECT o.number, d.code, d.name, o.used FROM orders o
               JOIN districts d ON d.district_id = o.district_id
               WHERE o.number = ANY(%s)""",
            (numbers,),
        ).fetchall()
    }
    for d in districts:
        new_active = Counter(
            s.order or d.enterprise_order.number
            for s in d.existing_students
            if s.status == "active" and (d.code, s.student_id) not in known
        )
        for order in (d.enterprise_order, *d.regular_orders):
            owner, owner_name, in_use = stored.get(order.number, (d.code, "", 0))
            if owner != d.code:
                problems.append(
                    Problem(
                        order.line,
                        f"district {d.code}",
                        f"order {order.number} belongs to district {owner} ({owner_name}); "
                        "an order number can belong to one district only",
                    )
                )
                continue
            new = new_active[order.number]
            if order.licenses >= in_use + new:
                continue
            if new:
                text = (
                    f"order {order.number}: {order.licenses} licenses requested but "
                    f"{in_use + new} active students would use it ({in_use} stored, {new} new "
                    f"under existing_students); keep at least {in_use + new}"
                )
            else:
                text = (
                    f"order {order.number}: {order.licenses} licenses requested but {in_use} "
                    "are in use by active students; deactivate students first or keep at "
                    f"least {in_use}"
                )
            problems.append(Problem(order.line, f"district {d.code}", text))
    return problems


def _school_problems(conn: psycopg.Connection, districts: list[DistrictSpec]) -> list[Problem]:
    """A stored school left out of the file (never deleted: it would stay as it is, open,
    without a word); the Holding Bin School moved to a school with active students."""
    by_code = {d.code: d for d in districts}
    listed = [(d.code, s.code) for d in districts for s in d.schools]
    missing = conn.execute(
        """SELECT d.code, s.code, s.name, s.school_id, d.district_id
           FROM schools s JOIN districts d ON d.district_id = s.district_id
           WHERE d.code = ANY(%s)
             AND (d.code, s.code) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[]))
           ORDER BY d.code, s.code""",
        ([d.code for d in districts], [c for c, _ in listed], [s for _, s in listed]),
    ).fetchall()
    moved = conn.execute(
        """SELECT d.code, s.code, s.school_id, d.district_id
           FROM unnest(%s::text[], %s::text[]) f(code, bin)
           JOIN districts d ON d.code = f.code
           JOIN schools s ON s.district_id = d.district_id AND s.code = f.bin
           WHERE d.holding_bin_school_id IS DISTINCT FROM s.school_id""",
        ([d.code for d in districts], [d.holding_bin_school for d in districts]),
    ).fetchall()
    counts = _students_at(conn, [(r[4], r[3]) for r in missing] + [(r[3], r[2]) for r in moved])
    problems = []
    for code, school, name, school_id, _ in missing:
        total, active = counts.get(school_id, (0, 0))
        held = (
            f" with {total} student{'s' if total != 1 else ''} ({active} active)" if total else ""
        )
        problems.append(
            Problem(
                by_code[code].line_of("schools"),
                f"district {code}",
                f"school {school} ({name}) is in the database{held} but not in the file: a "
                "school is never removed; keep it in `schools` (`active: false` closes it)",
            )
        )
    for code, school, school_id, _ in moved:
        active = counts.get(school_id, (0, 0))[1]
        if active:
            problems.append(
                Problem(
                    by_code[code].line_of("holding_bin_school"),
                    f"district {code}",
                    f"holding_bin_school {school} has {active} active "
                    f"student{'s' if active != 1 else ''}: the Holding Bin School holds no "
                    "student; move or deactivate them first",
                )
            )
    return problems


def _students_at(conn: psycopg.Connection, schools: list[tuple[int, int]]) -> dict[int, tuple]:
    """school_id -> (students, active students), for a few (district_id, school_id)."""
    if not schools:
        return {}
    rows = conn.execute(
        """SELECT st.school_id, count(*), count(*) FILTER (WHERE st.status = 'active')
           FROM unnest(%s::bigint[], %s::bigint[]) f(district_id, school_id)
           JOIN students st ON st.district_id = f.district_id AND st.school_id = f.school_id
           GROUP BY st.school_id""",
        ([d for d, _ in schools], [s for _, s in schools]),
    ).fetchall()
    return {school_id: (total, active) for school_id, total, active in rows}


def _new_student_problems(
    conn: psycopg.Connection, districts: list[DistrictSpec], known: set[tuple[str, str]]
) -> list[Problem]:
    """The existing students to be created: the upload's placement rules, and a username
    held by a stored student (of any district)."""
    problems = [
        problem
        for d in districts
        for problem in new_student_problems(d, {sid for code, sid in known if code == d.code})
    ]
    new = [
        (d, s)
        for d in districts
        for s in d.existing_students
        if (d.code, s.student_id) not in known
    ]
    if not new:
        return problems
    lowered = [s.username.lower() for _, s in new]
    lock_usernames(conn, pd.Series(lowered, dtype="str"))  # as an upload claiming them
    holders = {
        lower: (student_id, code)
        for lower, student_id, code in conn.execute(
            """SELECT lower(st.username), st.student_id, d.code FROM students st
               JOIN districts d ON d.district_id = st.district_id
               WHERE lower(st.username) = ANY(%s)""",
            (lowered,),
        ).fetchall()
    }
    for d, s in new:
        holder = holders.get(s.username.lower())
        if holder is not None:
            problems.append(
                Problem(
                    s.line,
                    f"district {d.code} student {s.student_id}",
                    f"username {s.username} is held by student {holder[0]} of district "
                    f"{holder[1]}; a username is unique across MY Access (without regard "
                    "to case)",
                )
            )
    return problems


def _load_district(conn: psycopg.Connection, d: DistrictSpec) -> dict[str, int]:
    s = d.sftp
    row = conn.execute(
        """
        INSERT INTO districts (code, name, timezone, contacts, process_at, sftp_host, sftp_port,
                               sftp_username, sftp_password_env, sftp_private_key_file,
                               sftp_host_key, sftp_root, encoding, grades, expected_by,
                               failure_contacts, guard, mode, pauses, low_licenses,
                               account_managers)
        VALUES (%(code)s, %(name)s, %(tz)s, %(contacts)s, %(at)s, %(host)s, %(port)s, %(user)s,
                %(pw)s, %(key)s, %(hk)s, %(root)s, %(encoding)s, %(grades)s, %(expected_by)s,
                %(failure_contacts)s, %(guard)s, %(mode)s, %(pauses)s, %(low_licenses)s,
                %(account_managers)s)
        ON CONFLICT (code) DO UPDATE SET
            encoding = EXCLUDED.encoding, grades = EXCLUDED.grades,
            expected_by = EXCLUDED.expected_by, failure_contacts = EXCLUDED.failure_contacts,
            name = EXCLUDED.name, timezone = EXCLUDED.timezone, contacts = EXCLUDED.contacts,
            process_at = EXCLUDED.process_at, sftp_host = EXCLUDED.sftp_host,
            sftp_port = EXCLUDED.sftp_port, sftp_username = EXCLUDED.sftp_username,
            sftp_password_env = EXCLUDED.sftp_password_env,
            sftp_private_key_file = EXCLUDED.sftp_private_key_file,
            sftp_host_key = EXCLUDED.sftp_host_key, sftp_root = EXCLUDED.sftp_root,
            guard = EXCLUDED.guard, mode = EXCLUDED.mode, pauses = EXCLUDED.pauses,
            low_licenses = EXCLUDED.low_licenses,
            account_managers = EXCLUDED.account_managers,
            updated_at = now()
        WHERE (districts.name, districts.timezone, districts.contacts, districts.process_at,
               districts.sftp_host, districts.sftp_port, districts.sftp_username,
               districts.sftp_password_env, districts.sftp_private_key_file,
               districts.sftp_host_key, districts.sftp_root, districts.encoding,
               districts.grades, districts.expected_by, districts.failure_contacts,
               districts.guard, districts.mode, districts.pauses, districts.low_licenses,
               districts.account_managers)
          IS DISTINCT FROM
              (EXCLUDED.name, EXCLUDED.timezone, EXCLUDED.contacts, EXCLUDED.process_at,
               EXCLUDED.sftp_host, EXCLUDED.sftp_port, EXCLUDED.sftp_username,
               EXCLUDED.sftp_password_env, EXCLUDED.sftp_private_key_file,
               EXCLUDED.sftp_host_key, EXCLUDED.sftp_root, EXCLUDED.encoding,
               EXCLUDED.grades, EXCLUDED.expected_by, EXCLUDED.failure_contacts,
               EXCLUDED.guard, EXCLUDED.mode, EXCLUDED.pauses, EXCLUDED.low_licenses,
               EXCLUDED.account_managers)
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
            "pauses": json.dumps(stored_pauses(d.pauses)),
            "low_licenses": d.low_licenses,
            "account_managers": list(d.account_managers),
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
