"""The master-data file of `eams setup load` (setup-example.yaml), parsed and checked.

Pure: YAML text in, dataclasses out, with errors that name the district and the key.
"""

from __future__ import annotations

import codecs
import datetime as dt
import difflib
import zoneinfo
from dataclasses import dataclass
from typing import Any

import yaml

from eams_pipeline.core.guard import GuardConfigError, parse_thresholds


class MasterDataError(ValueError):
    pass


# The keys each mapping of the file may hold. Anything else (a typo such as `grade:` for
# `grades:`, or a setting of a newer version) is an error naming the district and the key.
DISTRICT_KEYS = frozenset(
    {
        "code",
        "name",
        "timezone",
        "contacts",
        "failure_contacts",
        "sftp",
        "holding_bin_school",
        "enterprise_order",
        "schools",
        "regular_orders",
        "existing_students",
        "process_at",
        "expected_by",
        "encoding",
        "grades",
        "guard",  # issue 9 (change guard), parsed by its own loader
        "mode",  # issue 9
    }
)
SCHOOL_KEYS = frozenset({"code", "name", "active"})
ENTERPRISE_ORDER_KEYS = frozenset({"number", "licenses"})
REGULAR_ORDER_KEYS = frozenset({"number", "school", "licenses"})
STUDENT_KEYS = frozenset(
    {
        "student_id",
        "school",
        "last_name",
        "first_name",
        "middle_name",
        "grade",
        "username",
        "email",
        "class_name",
        "order",
        "status",
    }
)
SFTP_KEYS = frozenset(
    {"host", "port", "username", "password_env", "private_key_file", "host_key", "root"}
)

# the encodings a district's files may be read in (`encoding:`), by their canonical name
ENCODINGS = {"utf-8": "utf-8", "cp1252": "windows-1252", "iso8859-1": "latin-1"}
DEFAULT_ENCODING = "utf-8"
GRADE_ORDER = ("K", *(str(g) for g in range(1, 13)))


@dataclass(frozen=True)
class SchoolSpec:
    code: str
    name: str
    active: bool = True


@dataclass(frozen=True)
class OrderSpec:
    number: str
    licenses: int
    school: str | None = None


@dataclass(frozen=True)
class ExistingStudentSpec:
    student_id: str
    school: str
    last_name: str
    first_name: str
    grade: str
    username: str
    order: str | None
    status: str
    middle_name: str | None = None
    email: str | None = None
    class_name: str | None = None


@dataclass(frozen=True)
class SftpAccount:
    """A district's SFTP account (secrets are named, never stored)."""

    host: str
    port: int
    username: str
    host_key: str  # pinned OpenSSH public key line: "ssh-ed25519 AAAA..."
    root: str  # the directory that holds incoming/, errors/ and processed/
    password_env: str | None = None  # env var holding the password (or NAME_FILE)
    private_key_file: str | None = None  # ed25519, ECDSA or RSA private key, unencrypted

    @property
    def where(self) -> str:
        """``user@host:port``, for messages."""
        return f"{self.username}@{self.host}:{self.port}"


@dataclass(frozen=True)
class DistrictSpec:
    code: str
    name: str
    timezone: str
    contacts: tuple[str, ...]
    holding_bin_school: str
    enterprise_order: OrderSpec
    schools: tuple[SchoolSpec, ...]
    regular_orders: tuple[OrderSpec, ...] = ()
    existing_students: tuple[ExistingStudentSpec, ...] = ()
    sftp: SftpAccount | None = None
    process_at: dt.time | None = None
    expected_by: dt.time | None = None  # local time the nightly file is due (missing alert)
    encoding: str = DEFAULT_ENCODING  # utf-8, windows-1252 or latin-1
    grades: tuple[str, ...] | None = None  # participating grades; None: all
    failure_contacts: tuple[str, ...] = ()  # for rejected or held files, beside contacts
    # the change guard's limits (core.guard: absent = the defaults, None per rule = off)
    guard: dict[str, float | None] | None = None
    mode: str = "incremental"  # or "full_roster": students absent from the file deactivated


MODES = ("incremental", "full_roster")


def parse_master_data(text: str) -> list[DistrictSpec]:
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("districts"), list):
        raise MasterDataError("the file must have a top-level `districts:` list")
    districts = [_parse_district(i, d) for i, d in enumerate(doc["districts"])]
    codes = [d.code for d in districts]
    if len(set(codes)) != len(codes):
        raise MasterDataError("a district code appears twice")
    return districts


def _req(where: str, data: dict[str, Any], key: str) -> Any:
    if data.get(key) in (None, ""):
        raise MasterDataError(f"{where}: `{key}` is required")
    return data[key]


def _parse_district(i: int, d: Any) -> DistrictSpec:
    if not isinstance(d, dict):
        raise MasterDataError(f"districts[{i}] must be a mapping")
    code = str(_req(f"districts[{i}]", d, "code"))
    where = f"district {code}"
    _known(where, d, DISTRICT_KEYS)
    timezone = str(d.get("timezone") or "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise MasterDataError(f"{where}: unknown timezone {timezone!r}") from exc
    for s in d.get("schools") or []:
        _known(f"{where} school {s.get('code') if isinstance(s, dict) else s}", s, SCHOOL_KEYS)
    for o in d.get("regular_orders") or []:
        _known(f"{where} regular order", o, REGULAR_ORDER_KEYS)
    schools = tuple(
        SchoolSpec(
            code=str(_req(f"{where} school", s, "code")),
            name=str(s.get("name") or ""),
            active=bool(s.get("active", True)),
        )
        for s in d.get("schools") or []
    )
    school_codes = {s.code for s in schools}
    if len(school_codes) != len(schools):
        raise MasterDataError(f"{where}: a school code appears twice")
    bin_code = str(_req(where, d, "holding_bin_school"))
    if bin_code not in school_codes:
        raise MasterDataError(f"{where}: holding_bin_school {bin_code} is not in `schools`")
    ent = _req(where, d, "enterprise_order")
    _known(f"{where} enterprise_order", ent, ENTERPRISE_ORDER_KEYS)
    enterprise = OrderSpec(
        number=str(_req(f"{where} enterprise_order", ent, "number")),
        licenses=_count(where, ent.get("licenses")),
        school=bin_code,
    )
    regular = tuple(
        OrderSpec(
            number=str(_req(f"{where} regular order", o, "number")),
            licenses=_count(where, o.get("licenses")),
            school=str(o["school"]) if o.get("school") is not None else None,
        )
        for o in d.get("regular_orders") or []
    )
    for order in regular:
        if order.school is not None and order.school not in school_codes:
            raise MasterDataError(
                f"{where}: order {order.number} names unknown school {order.school}"
            )
    order_numbers = {enterprise.number, *(o.number for o in regular)}
    students = tuple(
        _student(where, s, school_codes, order_numbers) for s in d.get("existing_students") or []
    )
    sftp = d.get("sftp")
    try:
        guard = parse_thresholds(d.get("guard", None), f"{where}: guard")
    except GuardConfigError as exc:
        raise MasterDataError(str(exc)) from exc
    mode = str(d.get("mode") or "incremental")
    if mode not in MODES:
        raise MasterDataError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    return DistrictSpec(
        code=code,
        name=str(_req(where, d, "name")),
        timezone=timezone,
        contacts=tuple(str(c) for c in d.get("contacts") or []),
        holding_bin_school=bin_code,
        enterprise_order=enterprise,
        schools=schools,
        regular_orders=regular,
        existing_students=students,
        sftp=_sftp(where, sftp) if sftp else None,
        process_at=_time(where, d.get("process_at"), "process_at"),
        expected_by=_time(where, d.get("expected_by"), "expected_by"),
        encoding=_encoding(where, d.get("encoding")),
        grades=_grades(where, d.get("grades")),
        failure_contacts=tuple(str(c) for c in d.get("failure_contacts") or []),
        guard=guard,
        mode=mode,
    )


def _known(where: str, data: Any, keys: frozenset[str]) -> None:
    """Refuse a key the loader does not know, suggesting the nearest known one."""
    if not isinstance(data, dict):
        raise MasterDataError(f"{where} must be a mapping")
    for key in data:
        if key in keys:
            continue
        near = difflib.get_close_matches(str(key), sorted(keys), n=1, cutoff=0.6)
        hint = f" (did you mean `{near[0]}`?)" if near else ""
        raise MasterDataError(
            f"{where}: unknown key `{key}`{hint}; known keys: {', '.join(sorted(keys))}"
        )


def _encoding(where: str, value: Any) -> str:
    """The canonical name of a district's file encoding (utf-8 when absent)."""
    if value in (None, ""):
        return DEFAULT_ENCODING
    try:
        canonical = ENCODINGS.get(codecs.lookup(str(value)).name)
    except LookupError:
        canonical = None
    if canonical is None:
        raise MasterDataError(
            f"{where}: encoding must be one of {', '.join(ENCODINGS.values())}, got {value!r}"
        )
    return canonical


def _grades(where: str, value: Any) -> tuple[str, ...] | None:
    """Participating grades, normalised (K, 1..12) and in school order; None: all grades."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise MasterDataError(f"{where}: grades must be a non-empty list such as [K, 1, 2]")
    grades = set()
    for g in value:
        text = str(g).strip().upper()
        text = text[1:] if len(text) == 2 and text.startswith("0") else text
        if text not in GRADE_ORDER:
            raise MasterDataError(f"{where}: grades: {g!r} is not K or 1 to 12")
        grades.add(text)
    return tuple(g for g in GRADE_ORDER if g in grades)


def _count(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MasterDataError(f"{where}: licenses must be a whole number >= 0, got {value!r}")
    return value


def _time(where: str, value: Any, key: str = "process_at") -> dt.time | None:
    if value in (None, ""):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 06:00 as the sexagesimal number 360
        value = f"{value // 60:02d}:{value % 60:02d}"
    try:
        return dt.time.fromisoformat(str(value))
    except ValueError as exc:
        raise MasterDataError(f"{where}: {key} must be HH:MM, got {value!r}") from exc


def _sftp(where: str, s: dict[str, Any]) -> SftpAccount:
    _known(f"{where} sftp", s, SFTP_KEYS)
    if not (s.get("password_env") or s.get("private_key_file")):
        raise MasterDataError(f"{where}: sftp needs password_env or private_key_file")
    return SftpAccount(
        host=str(_req(f"{where} sftp", s, "host")),
        port=int(s.get("port") or 22),
        username=str(_req(f"{where} sftp", s, "username")),
        host_key=str(_req(f"{where} sftp", s, "host_key")),
        root=str(s.get("root") or "/"),
        password_env=s.get("password_env"),
        private_key_file=s.get("private_key_file"),
    )


def _student(
    where: str, s: dict[str, Any], schools: set[str], orders: set[str]
) -> ExistingStudentSpec:
    sid = str(_req(f"{where} existing student", s, "student_id"))
    w = f"{where} student {sid}"
    _known(w, s, STUDENT_KEYS)
    school = str(_req(w, s, "school"))
    if school not in schools:
        raise MasterDataError(f"{w}: unknown school {school}")
    order = str(s["order"]) if s.get("order") else None
    if order is not None and order not in orders:
        raise MasterDataError(f"{w}: unknown order {order}")
    status = str(s.get("status") or "active")
    if status not in ("active", "deactivated"):
        raise MasterDataError(f"{w}: status must be active or deactivated")
    return ExistingStudentSpec(
        student_id=sid,
        school=school,
        last_name=str(_req(w, s, "last_name")),
        first_name=str(_req(w, s, "first_name")),
        grade=str(_req(w, s, "grade")),
        username=str(_req(w, s, "username")),
        order=order,
        status=status,
        middle_name=s.get("middle_name"),
        email=s.get("email"),
        class_name=s.get("class_name"),
    )
