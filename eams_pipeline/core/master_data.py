"""The master-data file of `eams setup load` (the shape of the contract's setup-example.yaml;
the project's own example is examples/districts.yaml), parsed and checked.

Pure: YAML text in, dataclasses out, or a MasterDataError listing every problem, each
naming its line, the district and the key. The schema (a YAML loader that keeps lines and
refuses duplicate keys, anchors and aliases; strict pydantic models; the upload's column
rules for `existing_students`) is in core.master_data_schema, imported when a file is
parsed so that the readers of these dataclasses do not load it.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datetime as dt

    from eams_pipeline.core.pauses import Pause


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the master data: where (the file's line, 0 when it is not one
    line of the file), who (`district D1 school 101`) and what."""

    line: int
    where: str
    text: str

    def __str__(self) -> str:
        return (f"line {self.line}: " if self.line else "") + f"{self.where}: {self.text}"


class MasterDataError(ValueError):
    """The master data is refused; `problems` lists every reason found (file order)."""

    def __init__(self, problems: str | Sequence[Problem]) -> None:
        if isinstance(problems, str):
            self.problems: tuple[Problem, ...] = ()
            super().__init__(problems)
            return
        self.problems = tuple(sorted(set(problems), key=lambda p: (p.line == 0, p)))
        if len(self.problems) == 1:
            super().__init__(str(self.problems[0]))
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            super().__init__(f"{len(self.problems)} problems:\n{lines}")


# the encodings a district's files may be read in (`encoding:`), by their canonical name
ENCODINGS = {"utf-8": "utf-8", "cp1252": "windows-1252", "iso8859-1": "latin-1"}
DEFAULT_ENCODING = "utf-8"
GRADE_ORDER = ("K", *(str(g) for g in range(1, 13)))
MODES = ("incremental", "full_roster")


@dataclass(frozen=True)
class SchoolSpec:
    code: str
    name: str
    active: bool = True
    line: int = field(default=0, compare=False)  # of the file (0: not from a file)


@dataclass(frozen=True)
class OrderSpec:
    number: str
    licenses: int
    school: str | None = None
    line: int = field(default=0, compare=False)


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
    line: int = field(default=0, compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


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
    # date ranges (local, inclusive) without uploads: held `paused`, no missing alert
    pauses: tuple[Pause, ...] = ()
    # alerted below this many available Enterprise licenses (None: core.licenses' default)
    low_licenses: int | None = None
    account_managers: tuple[str, ...] = ()  # in copy of the low-licenses alert
    # the file's line of the district's mapping and of each of its keys (messages only)
    line: int = field(default=0, compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def line_of(self, key: str) -> int:
        """The line of one of the district's keys (of the district when it is absent)."""
        return self.lines.get(key, self.line)


def parse_master_data(text: str) -> list[DistrictSpec]:
    """The districts of a master-data file, or MasterDataError listing every problem."""
    from eams_pipeline.core.master_data_schema import parse

    return parse(text)


def new_student_problems(d: DistrictSpec, stored: set[str]) -> list[Problem]:
    """The upload's placement rules for the existing students to be created (those whose
    Student ID is not in `stored`; a stored student's entry is ignored, as its data is):
    never at the Holding Bin School, an active student never at a closed school nor in a
    grade that does not participate."""
    open_schools = {s.code for s in d.schools if s.active}
    problems = []
    for s in d.existing_students:
        if s.student_id in stored:
            continue
        who, active = f"district {d.code} student {s.student_id}", s.status == "active"
        if s.school == d.holding_bin_school:
            problems.append(
                Problem(
                    s.line_of("school"),
                    who,
                    f"school {s.school} is the Holding Bin School: no student is placed there",
                )
            )
        elif active and s.school not in open_schools:
            problems.append(
                Problem(
                    s.line_of("school"),
                    who,
                    f"school {s.school} is closed (active: false): only a deactivated "
                    "student may be placed there",
                )
            )
        if active and d.grades is not None and s.grade not in d.grades:
            problems.append(
                Problem(
                    s.line_of("grade"),
                    who,
                    f"grade {s.grade} does not participate (grades: {', '.join(d.grades)}); "
                    "only a deactivated student may have it",
                )
            )
    return problems


# -- one SFTP account, one district -----------------------------------------------------


def normalise_root(root: str | None) -> str:
    """A root as one spelling: `/a/`, `/a/./b/..` and `//a` are all `/a`; empty is `/`.
    A relative root (relative to the account's login directory) stays relative."""
    text = posixpath.normpath(root or "/")
    return "/" + text.lstrip("/") if text.startswith("//") else text


def _roots_overlap(a: str, b: str) -> bool:
    """Whether one root is the other or inside it (by path parts: `/ab` is not in `/a`).
    An absolute and a relative root cannot be compared without the server: they may."""
    a, b = normalise_root(a), normalise_root(b)
    if a.startswith("/") != b.startswith("/"):
        return True
    parts_a = [p for p in a.split("/") if p not in ("", ".")]
    parts_b = [p for p in b.split("/") if p not in ("", ".")]
    shorter = min(len(parts_a), len(parts_b))
    return parts_a[:shorter] == parts_b[:shorter]


@dataclass(frozen=True)
class AccountUse:
    """A district's SFTP account, and where it was read (`line 12`, `in the database`)."""

    code: str
    account: SftpAccount
    origin: str
    line: int = 0  # the line of its `sftp:` key in the file (0: from the database)


def sftp_conflicts(uses: Iterable[AccountUse]) -> Iterator[tuple[AccountUse, AccountUse]]:
    """The pairs of districts that would read each other's files: the same account (host
    without case, port, user name) with the same root or one root inside the other."""
    accounts: dict[tuple[str, int, str], list[AccountUse]] = defaultdict(list)
    for use in uses:
        a = use.account
        accounts[(a.host.strip().lower().rstrip("."), int(a.port), a.username)].append(use)
    for group in accounts.values():
        for one, two in combinations(group, 2):
            if _roots_overlap(one.account.root, two.account.root):
                yield one, two


def sftp_conflict_problems(uses: Iterable[AccountUse]) -> list[Problem]:
    """One problem per pair of districts sharing a directory of one SFTP account, at the
    line of the later one in the file (or of the one in the file)."""
    problems = []
    for one, two in sftp_conflicts(uses):
        first, second = (one, two) if (two.line or 0) >= (one.line or 0) else (two, one)
        a, b = first.account, second.account
        ra, rb = normalise_root(a.root), normalise_root(b.root)
        how = f"the same root {ra}" if ra == rb else f"roots {rb} and {ra}, one inside the other"
        problems.append(
            Problem(
                second.line,
                f"district {second.code}",
                f"sftp: the account {b.where} with {how} is also used by district "
                f"{first.code} ({first.origin}): both districts' sensors would read the same "
                "incoming/students.csv and one district's file would be applied to the other; "
                "give each district its own account or roots outside each other",
            )
        )
    return problems
