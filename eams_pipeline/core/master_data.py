"""The master-data file of `eams setup load` (setup-example.yaml), parsed and checked.

Pure: YAML text in, dataclasses out, with errors that name the district and the key.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Any

import yaml

from eams_pipeline.core.guard import GuardConfigError, parse_thresholds


class MasterDataError(ValueError):
    pass


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
    timezone = str(d.get("timezone") or "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise MasterDataError(f"{where}: unknown timezone {timezone!r}") from exc
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
        process_at=_time(where, d.get("process_at")),
        guard=guard,
        mode=mode,
    )


def _count(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MasterDataError(f"{where}: licenses must be a whole number >= 0, got {value!r}")
    return value


def _time(where: str, value: Any) -> dt.time | None:
    if value in (None, ""):
        return None
    try:
        return dt.time.fromisoformat(str(value))
    except ValueError as exc:
        raise MasterDataError(f"{where}: process_at must be HH:MM, got {value!r}") from exc


def _sftp(where: str, s: dict[str, Any]) -> SftpAccount:
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
