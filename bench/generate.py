"""A deterministic synthetic district and its nightly students.csv, generated vectorised.

`build_district(shape)` returns the district's current students (as the database holds
them) and the bytes of the night's file. `load_district` writes them to a migrated
database: master data through `eams setup load`'s code, students by COPY straight into
the table with the engine's own `data_fingerprint` and `password_fingerprint`, so that the
rows the file does not change are really unchanged and their passwords are not re-hashed.

The file's shape (scaled from SHAPES["nightly-1m"]):
- every existing student on a row; about 10% of them with changed data (last name, grade,
  school move or class), a few thousand status changes (A->D, D->A), 2% status I, 0.5%
  changed passwords, 5% empty passwords (unchanged), 2% harmless spelling variants
  (grade `05`/`k`, surrounding spaces) that normalise to the stored value;
- the new students (95% A, 5% X);
- 1% invalid rows of mixed kinds (every row error code of SPEC §5 but NO_LICENSE_AVAILABLE);
- enough Enterprise licenses for every acquisition.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

from eams_pipeline.core.fingerprints import data_fingerprint, fingerprint_key, password_fingerprint
from eams_pipeline.core.master_data import parse_master_data
from eams_pipeline.core.template import COLUMNS, HEADER
from eams_pipeline.db.bulk_copy import copy_in
from eams_pipeline.db.setup import load_master_data, recount_licenses

SEED = 20_260_917
SECRET = b"be9c" * 16  # the documented format (hexadecimal); never in production
DISTRICT = "BENCH"
OTHER_DISTRICT = "OTHER"  # holds usernames the file tries to take (USERNAME_TAKEN)
N_SCHOOLS = 120
CLOSED_SCHOOL = "SCH999"
ENTERPRISE_ORDER = "ENT-BENCH"
REGULAR_ORDERS = ("REG-BENCH-1", "REG-BENCH-2")
# any valid argon2id PHC string: the stored hashes are never verified by the engine
DUMMY_HASH = "$argon2id$v=19$m=8,t=1,p=1$YmVuY2hzYWx0$0kQ2Rj0n8Xb0fLq2oHqk1w"


@dataclass(frozen=True)
class Shape:
    existing: int  # students in the district before the upload
    new: int  # new students in the file
    deactivations: int  # active -> D
    activations: int  # deactivated -> A
    other_district: int  # students of another district

    @property
    def rows(self) -> int:
        return self.existing + self.new


SHAPES = {
    "nightly-1m": Shape(900_000, 100_000, 3_000, 2_000, 2_000),
    "nightly-100k": Shape(90_000, 10_000, 300, 200, 200),
    # a large district's first night (or a new school year): every row a new student
    "onboarding-1m": Shape(0, 1_000_000, 0, 0, 2_000),
    "onboarding-100k": Shape(0, 100_000, 0, 0, 200),
}


@dataclass(frozen=True)
class Variant:
    """How the data looks, so that the figures do not depend on one data set's shape.

    quoting: "all" (pyarrow: every string value quoted, the default data set) or
    "minimal" (Python's csv module: quotes only a value that needs them).
    names: "default" (4,000 last names of 2-4 syllables, 1,500 first names, 400 classes)
    or "wide" (40,000 last names of 2-6 syllables, 6,000 first names, 3,000 classes).
    """

    seed: int = SEED
    quoting: str = "all"
    schools: int = N_SCHOOLS
    names: str = "default"

    def tag(self) -> str:
        """'' for the default data set, else a short suffix naming what differs."""
        parts = []
        if self.seed != SEED:
            parts.append(f"s{self.seed}")
        if self.quoting != "all":
            parts.append(f"q{self.quoting[:3]}")
        if self.schools != N_SCHOOLS:
            parts.append(f"sch{self.schools}")
        if self.names != "default":
            parts.append(f"n{self.names}")
        return "_".join(parts)


@dataclass(frozen=True)
class District:
    shape: Shape
    students: pd.DataFrame  # the stored students (STUDENT columns below)
    other_students: pd.DataFrame
    file: bytes
    enterprise_size: int
    regular_size: int
    invalid_rows: int
    variant: Variant = field(default_factory=Variant)


def _name_pool(rng: np.random.Generator, size: int, min_syl: int, max_syl: int) -> np.ndarray:
    syllables = np.array(
        [
            "an",
            "ber",
            "cal",
            "dor",
            "el",
            "fa",
            "gan",
            "hol",
            "is",
            "jo",
            "ka",
            "lin",
            "mor",
            "na",
            "ol",
            "per",
            "quin",
            "ro",
            "sa",
            "tor",
            "ul",
            "ver",
            "wen",
            "xa",
            "yor",
            "zel",
            "bri",
            "cha",
            "del",
            "fin",
            "gri",
            "hal",
            "ing",
            "jac",
            "kel",
            "lor",
            "mar",
            "nor",
            "pra",
            "ris",
            "sel",
            "tan",
            "vin",
        ]
    )
    names = set()
    while len(names) < size:
        n = int(rng.integers(min_syl, max_syl + 1))
        names.add("".join(rng.choice(syllables, n)).capitalize())
    return np.array(sorted(names), dtype=object)


def _ids(prefix: str, numbers: np.ndarray, width: int = 7) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in numbers.tolist()], dtype=object)


def _passwords(rng: np.random.Generator, n: int) -> np.ndarray:
    tokens = rng.integers(0, 1 << 48, size=n, dtype=np.int64)
    return np.array([f"pw-{t:012x}" for t in tokens.tolist()], dtype=object)


def _maybe(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    """values where a coin with P(share) says so, else None (absent)."""
    out = values.astype(object, copy=True)
    out[rng.random(len(values)) >= share] = None
    return out


GRADES = np.array(["K", *(str(g) for g in range(1, 13))], dtype=object)


def _people(
    rng: np.random.Generator,
    numbers: np.ndarray,
    pools: dict[str, np.ndarray],
    schools: np.ndarray,
    id_prefix: str = "S",
) -> dict[str, np.ndarray]:
    """Students numbered `numbers`: template columns (but status) as object arrays of the
    normalised values, None for absent."""
    n = len(numbers)
    last = pools["last"][rng.integers(0, len(pools["last"]), n)]
    first = pools["first"][rng.integers(0, len(pools["first"]), n)]
    username = np.array(
        [f"{f[0]}{s}{i}".lower() for f, s, i in zip(first, last, numbers.tolist(), strict=True)],
        dtype=object,
    )
    email = np.array([u + "@students.bench.example.org" for u in username], dtype=object)
    return {
        "school_code": schools[rng.integers(0, len(schools), n)],
        "student_id": _ids(id_prefix, numbers),
        "last_name": last,
        "first_name": first,
        "middle_name": _maybe(rng, pools["first"][rng.integers(0, len(pools["first"]), n)], 0.4),
        "grade": GRADES[rng.integers(0, len(GRADES), n)],
        "username": username,
        "password": _passwords(rng, n),
        "email": _maybe(rng, email, 0.5),
        "class_name": _maybe(rng, pools["class"][rng.integers(0, len(pools["class"]), n)], 0.7),
    }


def _frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})


def build_district(shape: Shape, variant: Variant | None = None) -> District:
    variant = variant or Variant()
    rng = np.random.default_rng(variant.seed)
    wide = variant.names == "wide"
    pools = {
        "last": _name_pool(rng, 40_000 if wide else 4000, 2, 6 if wide else 4),
        "first": _name_pool(rng, 6000 if wide else 1500, 2, 3),
    }
    teachers = _name_pool(rng, 3000 if wide else 400, 2, 3)
    pools["class"] = np.array(
        [f"{t}, Room {r}" if r % 4 == 0 else f"{t} {r}" for r, t in enumerate(teachers)],
        dtype=object,
    )
    n_schools = variant.schools
    schools = np.array([f"SCH{i:03d}" for i in range(1, n_schools + 1)], dtype=object)

    # --- the district as stored -----------------------------------------------------
    ne = shape.existing
    stored = _people(rng, np.arange(ne), pools, schools)
    active = rng.random(ne) < 0.96
    regular = np.flatnonzero(rng.random(ne) < 0.01)
    order = np.full(ne, ENTERPRISE_ORDER, dtype=object)
    order[regular] = np.array(REGULAR_ORDERS, dtype=object)[regular % 2]
    stored["school_code"][regular] = np.array(["SCH001", "SCH002"], dtype=object)[regular % 2]
    existing = _frame(stored)
    existing["state"] = np.where(active, "active", "deactivated")
    existing["order"] = order
    existing["data_hash"] = data_fingerprint(existing)
    existing["password_fp"] = password_fingerprint(
        existing["student_id"], existing["password"], fingerprint_key(SECRET)
    )

    other_cols = _people(
        rng, np.arange(shape.other_district), pools, np.array(["OTH001"], dtype=object), "O"
    )
    other_cols["username"] = np.array(["other." + u for u in other_cols["username"]], object)
    other = _frame(other_cols)
    other["data_hash"] = data_fingerprint(other)

    # --- the night's file: existing students, changed as a SIS would ---------------
    old = {c: v.copy() for c, v in stored.items()}
    status = np.where(active, "A", "D").astype(object)
    status[rng.random(ne) < 0.02] = "I"
    status[rng.choice(np.flatnonzero(active), shape.deactivations, replace=False)] = "D"
    status[rng.choice(np.flatnonzero(~active), shape.activations, replace=False)] = "A"
    old["status"] = status

    changed = rng.choice(ne, ne // 10, replace=False)
    kind = rng.integers(0, 4, len(changed))
    pick = changed[kind == 0]  # last name (marriage, correction)
    picked_last = pools["last"][rng.integers(0, len(pools["last"]), len(pick))]
    old["last_name"][pick] = picked_last + "-" + old["first_name"][pick]
    pick = changed[kind == 1]  # promoted one grade (12 -> K is still a change)
    grade_no = np.array([0 if g == "K" else int(g) for g in old["grade"][pick]], np.int64)
    old["grade"][pick] = GRADES[(grade_no + 1) % len(GRADES)]
    pick = changed[kind == 2]  # moved to another school
    current = np.array([int(c[3:]) - 1 for c in old["school_code"][pick]], np.int64)
    moved = (current + rng.integers(1, n_schools, len(pick))) % n_schools
    old["school_code"][pick] = schools[moved]
    pick = changed[kind == 3]  # another class
    old["class_name"][pick] = (
        "New " + pools["class"][rng.integers(0, len(pools["class"]), len(pick))]
    )

    new_pw = rng.choice(ne, ne // 200, replace=False)
    old["password"][new_pw] = _passwords(rng, len(new_pw))
    old["password"][rng.choice(ne, ne // 20, replace=False)] = None
    spelled = rng.choice(ne, ne // 50, replace=False)
    v_grade, v_space = spelled[: len(spelled) // 2], spelled[len(spelled) // 2 :]
    old["grade"][v_grade] = [
        "k" if g == "K" else (f"0{g}" if len(g) == 1 else g) for g in old["grade"][v_grade]
    ]
    old["last_name"][v_space] = "  " + old["last_name"][v_space] + " "

    new = _people(rng, np.arange(ne, ne + shape.new), pools, schools)
    new["status"] = np.where(rng.random(shape.new) < 0.95, "A", "X").astype(object)

    # the file's order is a random permutation; rows are spoiled where they were made
    # (`perm[p]` is the row on file position p), which keeps the arrays cache-friendly
    perm = rng.permutation(shape.rows)
    rows = {c: np.concatenate([old[c], new[c]]) for c in COLUMNS}
    is_new = np.r_[np.zeros(ne, bool), np.ones(shape.new, bool)][perm]
    wrong_count, n_invalid = _spoil(rng, rows, perm, is_new, other_cols["username"])
    data = _to_csv(rows, perm, wrong_count, variant.quoting)

    acquisitions = int((new["status"] == "A").sum()) + shape.activations
    acquisitions += int((active[regular] & (status[regular] != "D")).sum())
    used = int((active & (order == ENTERPRISE_ORDER)).sum())
    return District(
        shape=shape,
        students=existing,
        other_students=other,
        file=data,
        enterprise_size=used + acquisitions + 1_000,
        regular_size=len(regular) + 100,
        invalid_rows=n_invalid,
        variant=variant,
    )


_KINDS = (
    "grade",
    "email",
    "missing",
    "too_long",
    "status",
    "school",
    "field_count",
    "dup_id",
    "dup_username",
    "bad_id",
    "bad_username",
    "short_password",
)
_NEW_ONLY = ("taken", "not_found", "password_required")
_OLD_ONLY = ("exists",)


def _spoil(
    rng: np.random.Generator,
    r: dict[str, np.ndarray],
    perm: np.ndarray,
    is_new: np.ndarray,
    other_usernames: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Make 1% of the file's rows invalid (in place), evenly over the kinds; returns the
    file positions to give a wrong field count and how many rows were spoiled."""
    per_kind = len(is_new) // 100 // (len(_KINDS) + len(_NEW_ONLY) + len(_OLD_ONLY))
    new_pos = rng.permutation(np.flatnonzero(is_new))
    old_pos = rng.permutation(np.flatnonzero(~is_new))
    spoiled = dict(zip(_NEW_ONLY, np.split(new_pos[: 3 * per_kind], 3), strict=True))
    spoiled["exists"] = old_pos[:per_kind]
    general = rng.permutation(np.r_[new_pos[3 * per_kind :], old_pos[per_kind:]])
    chunks = np.split(general[: len(_KINDS) * per_kind], len(_KINDS))
    spoiled.update(zip(_KINDS, chunks, strict=True))
    wrong_count = spoiled["field_count"]
    spoiled = {k: perm[v] for k, v in spoiled.items()}  # file position -> row made

    r["grade"][spoiled["grade"]] = "13"
    r["email"][spoiled["email"]] = "not-an-email"
    r["last_name"][spoiled["missing"]] = None
    r["first_name"][spoiled["too_long"]] = "X" * 61
    r["status"][spoiled["status"]] = "Q"
    r["school_code"][spoiled["school"]] = CLOSED_SCHOOL
    a, b = np.split(spoiled["dup_id"][: per_kind // 2 * 2], 2)  # pairs: both rows fail
    r["student_id"][b] = r["student_id"][a]
    a, b = np.split(spoiled["dup_username"][: per_kind // 2 * 2], 2)
    r["username"][b] = [u.upper() for u in r["username"][a]]
    r["student_id"][spoiled["bad_id"]] = r["student_id"][spoiled["bad_id"]] + "#"
    r["username"][spoiled["bad_username"]] = "a b"
    r["password"][spoiled["short_password"]] = "abc"
    taken = spoiled["taken"]
    r["username"][taken] = other_usernames[np.arange(len(taken)) % len(other_usernames)]
    r["status"][spoiled["not_found"]] = "D"
    r["password"][spoiled["password_required"]] = None
    r["status"][spoiled["exists"]] = "X"
    return wrong_count, sum(len(v) for v in spoiled.values())


def _to_csv(
    rows: dict[str, np.ndarray],
    perm: np.ndarray,
    wrong_count: np.ndarray,
    quoting: str = "all",
) -> bytes:
    if quoting == "minimal":  # as Python's csv module writes it (absent values empty)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        columns = [rows[c][perm] for c in COLUMNS]
        writer.writerows(zip(*columns, strict=True))
        body = text.getvalue().encode("utf-8")
    else:
        table = pa.table({c: pa.array(rows[c], pa.string(), from_pandas=True) for c in COLUMNS})
        sink = io.BytesIO()
        pacsv.write_csv(
            table.take(perm),
            sink,
            pacsv.WriteOptions(include_header=False, quoting_style="needed"),
        )
        body = sink.getvalue()
    # give some records one field too many or too few (no value holds a line break)
    ends = np.flatnonzero(np.frombuffer(body, np.uint8) == ord("\n"))
    starts = np.r_[0, ends[:-1] + 1]
    pieces, at = [(",".join(HEADER) + "\n").encode()], 0
    for i, pos in enumerate(np.sort(wrong_count).tolist()):  # a hundred rows: a plain loop
        line = body[starts[pos] : ends[pos]]
        pieces += [body[at : starts[pos]], line + b",extra" if i % 2 else line.rsplit(b",", 1)[0]]
        at = ends[pos]
    pieces.append(body[at:])
    return b"".join(pieces)


# --- an aged district: built by the engine's own uploads ------------------------------


def _stored_rows(district: District) -> dict[str, np.ndarray]:
    """The stored students as file columns: status A for active, D for deactivated."""
    st = district.students
    rows = {c: st[c].to_numpy(dtype=object, copy=True) for c in COLUMNS if c != "status"}
    rows["status"] = np.where(st["state"].to_numpy() == "active", "A", "D").astype(object)
    return rows


def onboarding_file(district: District) -> bytes:
    """The district's first night: every stored student as a new row (A, or X for a
    deactivated one), in a random order, with its password."""
    rows = _stored_rows(district)
    rows["status"] = np.where(rows["status"] == "A", "A", "X").astype(object)
    rng = np.random.default_rng(district.variant.seed + 1)
    perm = rng.permutation(len(district.students))
    return _to_csv(rows, perm, np.array([], dtype=np.int64), district.variant.quoting)


def aging_files(district: District, nights: int) -> list[bytes]:
    """`nights` nightly files that change the onboarded district as a SIS would (5% new
    class, 2% promoted, 1% new last name, 0.2% new password, ~0.5% status flips), then
    one file that brings every student back to its stored state: afterwards the database
    holds exactly the stored students (the night's benchmark file is planned against
    them), with a history table and dead tuples left by the engine's own writes."""
    rng = np.random.default_rng(district.variant.seed + 2)
    n = len(district.students)
    files = []
    for night in range(nights):
        rows = _stored_rows(district)
        pick = rng.choice(n, n // 20, replace=False)
        rows["class_name"][pick] = (
            f"Night {night + 1} " + district.students["last_name"].to_numpy(dtype=object)[pick]
        )
        pick = rng.choice(n, n // 50, replace=False)
        grade_no = np.array([0 if g == "K" else int(g) for g in rows["grade"][pick]])
        rows["grade"][pick] = GRADES[(grade_no + 1) % len(GRADES)]
        pick = rng.choice(n, n // 100, replace=False)
        rows["last_name"][pick] = rows["last_name"][pick] + "-" + rows["first_name"][pick]
        pick = rng.choice(n, n // 500, replace=False)
        rows["password"][pick] = _passwords(rng, len(pick))
        flip = rng.choice(n, n // 200, replace=False)
        rows["status"][flip] = np.where(rows["status"][flip] == "A", "D", "A")
        files.append(
            _to_csv(rows, rng.permutation(n), np.array([], np.int64), district.variant.quoting)
        )
    rows = _stored_rows(district)
    files.append(
        _to_csv(rows, rng.permutation(n), np.array([], np.int64), district.variant.quoting)
    )
    return files


def master_data(district: District) -> str:
    schools = [{"code": f"{DISTRICT}-HB", "name": "Enterprise Holding Bin School"}]
    n_schools = district.variant.schools
    schools += [{"code": f"SCH{i:03d}", "name": f"School {i}"} for i in range(1, n_schools + 1)]
    schools.append({"code": CLOSED_SCHOOL, "name": "Closed School", "active": False})
    doc = {
        "districts": [
            {
                "code": DISTRICT,
                "name": "Benchmark Unified",
                "contacts": ["sis-admin@bench.example.org"],
                "holding_bin_school": f"{DISTRICT}-HB",
                "enterprise_order": {
                    "number": ENTERPRISE_ORDER,
                    "licenses": district.enterprise_size,
                },
                "schools": schools,
                "regular_orders": [
                    {"number": n, "school": s, "licenses": district.regular_size}
                    for n, s in zip(REGULAR_ORDERS, ("SCH001", "SCH002"), strict=True)
                ],
            },
            {
                "code": OTHER_DISTRICT,
                "name": "Other District",
                "holding_bin_school": f"{OTHER_DISTRICT}-HB",
                "enterprise_order": {
                    "number": "ENT-OTHER",
                    "licenses": len(district.other_students) + 10,
                },
                "schools": [
                    {"code": f"{OTHER_DISTRICT}-HB", "name": "Bin"},
                    {"code": "OTH001", "name": "Other School"},
                ],
            },
        ]
    }
    return yaml.safe_dump(doc)


def load_district(
    conn: psycopg.Connection, district: District, *, bench_students: bool = True
) -> None:
    """Master data, then every existing student by COPY, then the license counters.
    Without `bench_students` only the other district's students are loaded (the
    benchmark district is then empty, to be filled by the engine's own uploads: its
    Enterprise order is sized for every stored student and every new one)."""
    if not bench_students:
        district = replace(
            district,
            enterprise_size=len(district.students) + district.shape.new + 1_000,
        )
    load_master_data(conn, parse_master_data(master_data(district)))
    loads = [(OTHER_DISTRICT, district.other_students, None)]
    if bench_students:
        loads.insert(0, (DISTRICT, district.students, district.students["password_fp"]))
    with conn.transaction():
        for code, frame, password_fp in loads:
            did = conn.execute("SELECT district_id FROM districts WHERE code = %s", (code,))
            district_id = did.fetchone()[0]
            schools = dict(
                conn.execute(
                    "SELECT code, school_id FROM schools WHERE district_id = %s", (district_id,)
                ).fetchall()
            )
            orders = dict(
                conn.execute(
                    "SELECT number, order_id FROM orders WHERE district_id = %s", (district_id,)
                ).fetchall()
            )
            n = len(frame)
            state = frame.get("state", pd.Series("active", index=frame.index))
            order = frame.get("order", pd.Series("ENT-OTHER", index=frame.index))
            stored = pd.DataFrame(
                {
                    "district_id": np.full(n, district_id, dtype=np.int64),
                    "student_id": frame["student_id"],
                    "school_id": frame["school_code"].map(schools).astype("int64"),
                    "last_name": frame["last_name"],
                    "first_name": frame["first_name"],
                    "middle_name": frame["middle_name"],
                    "grade": frame["grade"],
                    "username": frame["username"],
                    "password_hash": DUMMY_HASH,
                    "password_fingerprint": password_fp
                    if password_fp is not None
                    else pd.Series(pd.NA, index=frame.index, dtype="Int64"),
                    "email": frame["email"],
                    "class_name": frame["class_name"],
                    "status": state,
                    "order_id": order.map(orders).astype("int64"),
                    "data_hash": frame["data_hash"],
                }
            )
            copy_in(conn, "students", stored)
            recount_licenses(conn, district_id)
