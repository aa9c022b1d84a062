"""A row-by-row reference of the whole upload semantics, in plain Python.

Written from SPEC.md and the README's "Decisions where the spec is silent", one record at
a time, so that a reader can check it against the contract line by line. It is the
oracle the vectorised engine is compared with (services/test_reference_equivalence.py) and the
baseline a benchmark times. No pandas, no database: the stdlib `csv` module and `re`.

    state = DistrictState(code="D1", enterprise_order="ENT-D1", schools=..., orders=...,
                          students=..., usernames=...)
    result = reference_process(data, state)   # `state` is not modified
    result.status, result.counts, result.error_codes, result.errors, result.state

Passwords are kept in clear text in the reference state: it stands in for the engine's
hash (equal clear text = same fingerprint = unchanged password).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

# the contract (transitions.csv): $EAMS_SPEC_DIR, else <checkout>/../shared/spec; when it is
# absent the reference follows the code's table (eams_pipeline.core.transitions)
SPEC_DIR = Path(
    os.environ.get("EAMS_SPEC_DIR") or Path(__file__).resolve().parent.parent / "shared" / "spec"
)


# ---------------------------------------------------------------------------------------
# The state of one district (and the usernames of all of MY Access)
# ---------------------------------------------------------------------------------------

ACTIVE, DEACTIVATED, ABSENT = "active", "deactivated", "absent"
ENTERPRISE, REGULAR = "enterprise", "regular"


@dataclass(frozen=True)
class School:
    active: bool = True
    holding_bin: bool = False


@dataclass(frozen=True)
class Order:
    kind: str  # "enterprise" or "regular"
    size: int
    used: int


@dataclass(frozen=True)
class Student:
    status: str  # "active" or "deactivated"
    order: str  # order number
    school_code: str
    last_name: str
    first_name: str
    middle_name: str | None
    grade: str
    username: str
    email: str | None
    class_name: str | None
    password: str | None  # clear text: the reference's stand-in for the hash


@dataclass
class DistrictState:
    code: str
    enterprise_order: str  # number of the district's current Enterprise order
    schools: dict[str, School]  # school code -> school (the holding bin included)
    orders: dict[str, Order]  # order number -> order (this district's orders)
    students: dict[str, Student]  # Student ID -> student (this district's students)
    # lower(username) -> (district code, Student ID), for every student of MY Access;
    # this district's own students must be in it too (see `with_own_usernames`)
    usernames: dict[str, tuple[str, str]] = field(default_factory=dict)

    def with_own_usernames(self) -> DistrictState:
        """The same state with this district's students' usernames added to `usernames`."""
        held = dict(self.usernames)
        for student_id, s in self.students.items():
            held[s.username.lower()] = (self.code, student_id)
        return replace(self, usernames=held)


@dataclass(frozen=True)
class RowError:
    line: int
    student_id: str
    column: str  # template column name, "" for a record or file error
    code: str


@dataclass
class ReferenceResult:
    status: str  # processed / partially_processed / rejected
    counts: dict[str, int]  # rows, added, activated, deactivated, updated, unchanged, errors
    error_codes: dict[str, int]
    errors: list[RowError]  # file order
    outcomes: list[str]  # one per data record: added ... unchanged, or errors
    lines: list[int]  # the physical line where each data record starts (0: rejected file)
    cases: list[int | None]  # the case of transitions.csv each record matched, if any
    state: DistrictState  # the state after the upload (a new object)


# ---------------------------------------------------------------------------------------
# The contract's tables
# ---------------------------------------------------------------------------------------

HEADER = (
    "School Code",
    "Student ID",
    "Last Name",
    "First Name",
    "Middle Name",
    "Grade",
    "Username",
    "Password",
    "Email",
    "Class Name",
    "Status",
)
REQUIRED = {"School Code", "Student ID", "Last Name", "First Name", "Grade", "Username", "Status"}
MAX_LENGTH = {  # README "Lengths"
    "School Code": 64,
    "Student ID": 32,
    "Last Name": 60,
    "First Name": 60,
    "Middle Name": 60,
    "Username": 64,
    "Password": 64,
    "Email": 254,
    "Class Name": 100,
}
STUDENT_ID_CHARS = re.compile(r"[A-Za-z0-9._-]+")
USERNAME_CHARS = re.compile(r"[A-Za-z0-9._@-]+")
# dot-atom local part @ dotted host names ending in a letter top-level domain
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}")
GRADES = {"K": "K", "k": "K", **{str(g): str(g) for g in range(1, 13)}}
GRADES.update({f"0{g}": str(g) for g in range(1, 10)})
STATUSES = {"A", "D", "X", "I"}
# the column's INVALID_ rule: True when the (present, trimmed) value breaks it
INVALID = {
    "Student ID": lambda s: STUDENT_ID_CHARS.fullmatch(s) is None,
    "Grade": lambda s: s not in GRADES,
    "Username": lambda s: len(s) < 3 or USERNAME_CHARS.fullmatch(s) is None,
    "Password": lambda s: len(s) < 6,
    "Email": lambda s: EMAIL.fullmatch(s) is None,
    "Status": lambda s: _status(s) not in STATUSES,
}
OUTCOMES = ("added", "activated", "deactivated", "updated", "unchanged", "errors")
# README: control characters (C0, DEL, C1) and text-direction marks in the free-text columns
# are INVALID_CHARACTERS; a value of only spaces and zero-width characters is empty
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
FREE_TEXT = {"School Code", "Last Name", "First Name", "Middle Name", "Class Name"}
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u180e\u00ad"


def _present(field: str) -> str | None:
    """The trimmed value, or None when it is empty or only spaces and zero-width marks."""
    value = field.strip()
    return value if value.strip(ZERO_WIDTH + " \t\r\n\u00a0") else None


def _status(value: str) -> str:
    """The status flag of a Status value: upper-case; IGNORE (any case) is I."""
    flag = value.upper()
    return "I" if flag == "IGNORE" else flag


def _read_transitions() -> dict[tuple[str, str, str], dict[str, str]]:
    """(student_before, order_before, flag) -> the row of transitions.csv; `any` expanded."""
    table = {}
    path = SPEC_DIR / "transitions.csv"
    if not path.is_file():  # the contract is not beside this checkout: the code's own table
        return transitions_of_the_code()
    with path.open(newline="", encoding="utf-8") as fh:
        for case in csv.DictReader(fh):
            kinds = (
                [ENTERPRISE, REGULAR] if case["order_before"] == "any" else [case["order_before"]]
            )
            for kind in kinds:
                table[(case["student_before"], kind, case["status_flag"])] = case
    return table


def transitions_of_the_code() -> dict[tuple[str, str, str], dict[str, str]]:
    from eams_pipeline.core.transitions import TRANSITIONS as TABLE

    table = {}
    for t in TABLE.itertuples():
        error = t.error if isinstance(t.error, str) else ""
        table[(t.before, t.order, t.flag)] = {
            "case": str(t.case),
            "student_before": t.before,
            "order_before": t.order,
            "status_flag": t.flag,
            "outcome": "error" if error else "ok",
            "error_code": error,
            "data_updated": "no" if error else "yes",
            "student_after": t.after,
            "order_after": t.order_after,
            "enterprise_used_delta": str(t.ent),
            "previous_order_used_delta": str(t.prev),
        }
    return table


TRANSITIONS = _read_transitions()


# ---------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------


class _Rejected(Exception):
    def __init__(self, code: str, line: int) -> None:
        self.code, self.line = code, line


def _records(text: str) -> list[tuple[int, list[str]]]:
    """(physical start line, fields) of every record; a blank line is a record with no
    fields. Only LF ends a line (CRLF's CR is part of the ending)."""
    reader = csv.reader(io.StringIO(text, newline="\n"))
    out = []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return out
        out.append((start, fields))


def _parse(data: bytes) -> list[tuple[int, list[str]]]:
    """The data records (blank lines dropped). Raises _Rejected for a file-level error."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        if exc.end == len(data) and exc.reason == "unexpected end of data":
            raise _Rejected("FILE_TRUNCATED", line) from None  # cut inside a character
        raise _Rejected("FILE_ENCODING", line) from None
    if "\x00" in text:  # valid UTF-8, but not text
        raise _Rejected("FILE_ENCODING", text.count("\n", 0, text.index("\x00")) + 1)
    if not text.strip():
        raise _Rejected("FILE_EMPTY", 1)
    records = _records(text)
    header = tuple(name.strip() for name in records[0][1])
    if header != HEADER:
        raise _Rejected("HEADER_MISMATCH", 1)
    rows = [(line, fields) for line, fields in records[1:] if fields]
    if not rows:
        raise _Rejected("FILE_EMPTY", 2)
    # cut short: no line break after the last record, which is not mere padding and ends
    # inside a quoted value or has fewer fields than the header
    last_line, last_fields = rows[-1]
    tail = "\n".join(text.split("\n")[last_line - 1 :])
    cut = _ends_in_quotes(tail) or len(last_fields) < len(HEADER)
    if not text.endswith("\n") and tail.strip(" \t\r") and cut:
        raise _Rejected("FILE_TRUNCATED", last_line)
    return rows


def _ends_in_quotes(record: str) -> bool:
    """Is the record's text still inside a quoted field at its end? A quote opens a field
    only at its start; inside, a doubled quote is a quote and a single one closes it."""
    inside, field_start, i = False, True, 0
    while i < len(record):
        char = record[i]
        if inside:
            if char == '"' and record[i + 1 : i + 2] == '"':
                i += 1
            elif char == '"':
                inside = False
        elif char == '"' and field_start:
            inside, field_start = True, False
        else:
            field_start = char in ",\n"
        i += 1
    return inside


def _count_records(data: bytes) -> int:
    """Data records of a rejected file (which may not be UTF-8: latin-1 keeps every byte)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode("latin-1")
    if not text.strip():
        return 0
    return sum(1 for _, fields in _records(text)[1:] if fields)


# ---------------------------------------------------------------------------------------
# One row
# ---------------------------------------------------------------------------------------


@dataclass
class _Row:
    ordinal: int
    line: int
    student_id: str  # as written (trimmed), "" when absent: for the error records
    values: dict[str, str | None] | None  # template name -> trimmed value; None: malformed
    errors: list[RowError] = field(default_factory=list)
    case: dict[str, str] | None = None  # the matched transitions.csv row
    outcome: str = "errors"

    def error(self, column: str, code: str) -> None:
        self.errors.append(RowError(self.line, self.student_id, column, code))


def _column_errors(row: _Row) -> tuple[bool, bool, bool]:
    """Check every column rule; returns (Student ID valid, Username valid, Status valid)."""
    v = row.values
    assert v is not None
    bad: set[str] = set()
    for name in HEADER:
        value = v[name]
        if value is None:
            if name in REQUIRED:
                row.error(name, "REQUIRED_FIELD_MISSING")
                bad.add(name)
            continue
        if name in MAX_LENGTH and len(value) > MAX_LENGTH[name]:
            row.error(name, "FIELD_TOO_LONG")
            bad.add(name)
        if name in FREE_TEXT and CONTROLS.search(value):
            row.error(name, "INVALID_CHARACTERS")
            bad.add(name)
        invalid = INVALID.get(name)
        if invalid is not None and invalid(value):
            row.error(name, "INVALID_" + name.upper().replace(" ", "_"))
            bad.add(name)
    return "Student ID" not in bad, "Username" not in bad, "Status" not in bad


def _stored(v: dict[str, str | None], status: str, order: str, password: str | None) -> Student:
    return Student(
        status=status,
        order=order,
        school_code=v["School Code"],
        last_name=v["Last Name"],
        first_name=v["First Name"],
        middle_name=v["Middle Name"],
        grade=GRADES[v["Grade"]],
        username=v["Username"],
        email=v["Email"],
        class_name=v["Class Name"],
        password=password,
    )


# ---------------------------------------------------------------------------------------
# The upload
# ---------------------------------------------------------------------------------------


def reference_process(data: bytes, state: DistrictState) -> ReferenceResult:
    """Process one upload of `state.code` row by row; `state` is left as it was."""
    try:
        records = _parse(data)
    except _Rejected as rejected:
        n = _count_records(data)
        return ReferenceResult(
            status="rejected",
            counts={"rows": n, **{k: 0 for k in OUTCOMES}, "errors": n},
            error_codes={rejected.code: 1},
            errors=[RowError(rejected.line, "", "", rejected.code)],
            outcomes=["errors"] * n,
            lines=[0] * n,  # a rejected file's records are not located
            cases=[None] * n,
            state=state,
        )

    rows: list[_Row] = []
    before = len(HEADER)  # the fields of the record before (the header's first)
    for ordinal, (line, fields) in enumerate(records):
        if len(fields) != len(HEADER):
            # the second field is shown as the Student ID when it is one and the record
            # before is complete: after a short record it may be the rest of a row split by
            # a line break, whose second field may be the password
            sid = fields[1].strip() if len(fields) > 1 and before >= len(HEADER) else ""
            shown = STUDENT_ID_CHARS.fullmatch(sid) and len(sid) <= 32
            r = _Row(ordinal, line, sid if shown else "", None)
            r.error("", "WRONG_FIELD_COUNT")
        else:
            values = {name: _present(f) for name, f in zip(HEADER, fields, strict=True)}
            r = _Row(ordinal, line, values["Student ID"] or "", values)
        rows.append(r)
        before = len(fields)

    # duplicates count over every well-formed row with the value, whatever its errors
    well_formed = [r for r in rows if r.values is not None]
    ids = Counter(r.values["Student ID"] for r in well_formed if r.values["Student ID"])
    names = Counter(r.values["Username"].lower() for r in well_formed if r.values["Username"])

    targets = {code for code, s in state.schools.items() if s.active and not s.holding_bin}
    # a closed school is a target for D rows only (its students can still be deactivated)
    closed = {code for code, s in state.schools.items() if not s.active and not s.holding_bin}
    enterprise = state.enterprise_order
    for r in well_formed:
        v = r.values
        id_ok, username_ok, status_ok = _column_errors(r)
        if v["Student ID"] and ids[v["Student ID"]] > 1:
            r.error("Student ID", "DUPLICATE_STUDENT_ID")
        if v["Username"] and names[v["Username"].lower()] > 1:
            r.error("Username", "DUPLICATE_USERNAME")
        deactivating = status_ok and _status(v["Status"]) == "D"
        if (
            v["School Code"] is not None
            and v["School Code"] not in targets
            and not (deactivating and v["School Code"] in closed)
        ):
            r.error("School Code", "SCHOOL_NOT_FOUND")
        student = state.students.get(v["Student ID"]) if id_ok else None
        if id_ok and status_ok:
            before = student.status if student else ABSENT
            kind = (
                "none"
                if student is None
                else (ENTERPRISE if student.order == enterprise else REGULAR)
            )
            r.case = TRANSITIONS[(before, kind, _status(v["Status"]))]
            if r.case["error_code"]:
                r.error("Status", r.case["error_code"])
        if username_ok:
            holder = state.usernames.get(v["Username"].lower())
            if holder is not None and holder != (state.code, v["Student ID"]):
                r.error("Username", "USERNAME_TAKEN")
        creates = r.case is not None and r.case["student_before"] == ABSENT
        if creates and not r.case["error_code"] and v["Password"] is None:
            r.error("Password", "PASSWORD_REQUIRED")

    # licenses: every return to the bin first, then acquisitions in file order
    clean = [r for r in well_formed if not r.errors]
    bin_free = state.orders[enterprise].size - state.orders[enterprise].used
    bin_free += sum(1 for r in clean if int(r.case["enterprise_used_delta"]) < 0)
    for r in clean:
        if int(r.case["enterprise_used_delta"]) > 0:
            if bin_free > 0:
                bin_free -= 1
            else:
                r.error("Status", "NO_LICENSE_AVAILABLE")

    # apply, in file order
    students = dict(state.students)
    used = {number: o.used for number, o in state.orders.items()}
    usernames = dict(state.usernames)
    for r in well_formed:
        if r.errors:
            continue
        v, case = r.values, r.case
        sid = v["Student ID"]
        old = students.get(sid)
        status = case["student_after"]
        # order_after "regular": the student stays on the order it is on
        order = enterprise if case["order_after"] == ENTERPRISE else old.order
        password = v["Password"] if v["Password"] is not None else old.password
        new = _stored(v, status, order, password)
        used[enterprise] += int(case["enterprise_used_delta"])
        if int(case["previous_order_used_delta"]):
            used[old.order] += int(case["previous_order_used_delta"])
        if old is None:
            r.outcome = "added"
        elif old.status == DEACTIVATED and status == ACTIVE:
            r.outcome = "activated"
        elif old.status == ACTIVE and status == DEACTIVATED:
            r.outcome = "deactivated"
        elif new != old:
            r.outcome = "updated"
        else:
            r.outcome = "unchanged"
            continue
        students[sid] = new
        if old is not None and usernames.get(old.username.lower()) == (state.code, sid):
            del usernames[old.username.lower()]
        usernames[new.username.lower()] = (state.code, sid)

    for number, n in used.items():
        assert 0 <= n <= state.orders[number].size, f"order {number} would hold {n} licenses"
    errors = [e for r in rows for e in r.errors]
    outcomes = [r.outcome for r in rows]
    counts = {"rows": len(rows), **{k: outcomes.count(k) for k in OUTCOMES}}
    return ReferenceResult(
        status="partially_processed" if counts["errors"] else "processed",
        counts=counts,
        error_codes=dict(sorted(Counter(e.code for e in errors).items())),
        errors=errors,
        outcomes=outcomes,
        lines=[r.line for r in rows],
        cases=[int(r.case["case"]) if r.case else None for r in rows],
        state=replace(
            state,
            students=students,
            orders={n: replace(o, used=used[n]) for n, o in state.orders.items()},
            usernames=usernames,
        ),
    )


# ---------------------------------------------------------------------------------------
# A state read from the MY Access database
# ---------------------------------------------------------------------------------------


def district_state_from_db(
    conn: object, district: str, passwords: dict[str, str] | None = None
) -> DistrictState:
    """The reference state of a district as stored (`conn`: a psycopg connection).

    The database holds password hashes only: `passwords` (Student ID -> clear text) gives
    the students whose password is known; the others get None, which the reference
    treats as "no password yet" (a non-empty Password in a row then counts as a change).
    """
    passwords = passwords or {}
    execute = conn.execute  # type: ignore[attr-defined]
    (district_id, enterprise) = execute(
        """SELECT d.district_id, o.number FROM districts d
           JOIN orders o ON o.order_id = d.enterprise_order_id WHERE d.code = %s""",
        (district,),
    ).fetchone()
    schools = {
        code: School(active=active, holding_bin=holding_bin)
        for code, active, holding_bin in execute(
            """SELECT s.code, s.active, s.school_id = d.holding_bin_school_id
               FROM schools s JOIN districts d USING (district_id) WHERE s.district_id = %s""",
            (district_id,),
        )
    }
    orders = {
        number: Order(kind=kind, size=size, used=used)
        for number, kind, size, used in execute(
            "SELECT number, kind, size, used FROM orders WHERE district_id = %s", (district_id,)
        )
    }
    students = {
        r[0]: Student(
            status=r[1],
            order=r[2],
            school_code=r[3],
            last_name=r[4],
            first_name=r[5],
            middle_name=r[6],
            grade=r[7],
            username=r[8],
            email=r[9],
            class_name=r[10],
            password=passwords.get(r[0]),
        )
        for r in execute(
            """SELECT s.student_id, s.status, o.number, sc.code, s.last_name, s.first_name,
                      s.middle_name, s.grade, s.username, s.email, s.class_name
               FROM students s JOIN orders o ON o.order_id = s.order_id
               JOIN schools sc ON sc.school_id = s.school_id WHERE s.district_id = %s""",
            (district_id,),
        )
    }
    usernames = {
        lower: (code, sid)
        for lower, code, sid in execute(
            """SELECT lower(s.username), d.code, s.student_id
               FROM students s JOIN districts d USING (district_id)"""
        )
    }
    return DistrictState(
        code=district,
        enterprise_order=enterprise,
        schools=schools,
        orders=orders,
        students=students,
        usernames=usernames,
    )
