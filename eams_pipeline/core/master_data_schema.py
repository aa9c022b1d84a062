"""The master-data file's schema, checked in full before anything touches the database.

- YAML: a SafeLoader that keeps the line of every mapping, key and list item, and refuses
  what YAML would otherwise do silently: a key given twice (the last one won), anchors and
  aliases (`&a`/`*a`: a 645-byte file could expand to gigabytes), merge keys (`<<`).
- Types: strict pydantic models, one per mapping. Nothing is coerced: a quoted `"false"`
  is not a boolean, `admin@x.org` is not a list of contacts, an unquoted `0101` (which
  YAML 1.1 reads as 65) is not a school code. Names and contacts are trimmed like an
  upload's values and may hold no control character (a line break breaks every email).
- `existing_students`: the upload's column rules (core.validation's schema, on a frame of
  them) and the upload's school rules (never the Holding Bin School, an active student
  never at a closed school, a participating grade).
- Relations: schools, orders, Student IDs and usernames named once; order numbers, and
  an SFTP account's directory, belong to one district.

Every problem found is reported at once (MasterDataError), naming its line, the district
and the key. What needs the database (the stored districts and students) is in
db.setup.
"""

from __future__ import annotations

import codecs
import datetime as dt
import difflib
import re
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import pandas as pd
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import ValidationError as PydanticError

from eams_pipeline.core.errors import visible
from eams_pipeline.core.guard import GuardConfigError, parse_thresholds
from eams_pipeline.core.master_data import (
    DEFAULT_ENCODING,
    ENCODINGS,
    GRADE_ORDER,
    AccountUse,
    DistrictSpec,
    ExistingStudentSpec,
    MasterDataError,
    OrderSpec,
    Problem,
    SchoolSpec,
    SftpAccount,
    normalise_root,
    sftp_conflict_problems,
)
from eams_pipeline.core.pauses import Pause, overlaps
from eams_pipeline.core.template import COLUMNS, DISPLAY_NAME
from eams_pipeline.core.validation import (
    CONTROL_CHARACTERS,
    EMAIL_PATTERN,
    MAX_LENGTH,
    normalise,
    validate_rows,
)

# -- YAML with lines -----------------------------------------------------------------------


class YamlMapping(dict[Any, Any]):
    """A YAML mapping, with the line of its first key, of each key, and the keys repeated
    (key, line, line of the first)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: dict[Any, int] = {}
        self.duplicates: list[tuple[Any, int, int]] = []


class YamlList(list[Any]):
    """A YAML sequence, with its line and the line of each item."""

    def __init__(self, line: int, items: list[Any], lines: list[int]) -> None:
        super().__init__(items)
        self.line = line
        self.lines = lines


class _Refused(Exception):
    def __init__(self, mark: yaml.Mark, text: str) -> None:
        super().__init__(text)
        self.line = mark.line + 1
        self.text = text


class _Loader(yaml.SafeLoader):
    """SafeLoader refusing anchors and aliases, building YamlMapping and YamlList."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                event.start_mark,
                "YAML anchors and aliases (`&name`, `*name`) are not accepted: "
                "write each value out",
            )
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def _mapping(loader: _Loader, node: yaml.MappingNode) -> YamlMapping:
    out = YamlMapping(node.start_mark.line + 1)
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool | None):
            raise _Refused(key_node.start_mark, "a key must be a plain name")
        if key in out.lines:
            out.duplicates.append((key, line, out.lines[key]))
            continue
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> YamlList:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    return YamlList(node.start_mark.line + 1, items, [c.start_mark.line + 1 for c in node.value])


def _timestamp(loader: _Loader, node: yaml.ScalarNode) -> Any:
    """An unquoted date (2026-06-15) or date and time: what SafeLoader makes of it, or the
    text itself when it is no such day (2026-02-30 made yaml.load raise a bare ValueError):
    the key's own rule then names it and its line."""
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:map", _mapping)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)
_Loader.add_constructor("tag:yaml.org,2002:seq", _sequence)
# `<<` is a plain (and unknown) key here, never a merge of another mapping
_Loader.add_constructor("tag:yaml.org,2002:merge", lambda loader, node: node.value)


def load_yaml(text: str) -> Any:
    """The document, with lines; MasterDataError for what is not plain YAML data."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except _Refused as exc:
        problem = Problem(exc.line, "the file", exc.text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        problem = Problem(mark.line + 1 if mark else 0, "the file", f"not valid YAML: {what}")
    except yaml.YAMLError as exc:
        problem = Problem(0, "the file", f"not valid YAML: {exc}")
    except RecursionError:
        problem = Problem(0, "the file", "not valid master data: nested too deeply")
    raise MasterDataError([problem])


# -- types ---------------------------------------------------------------------------------


def _rule(passes: Callable[[Any], bool], text: Callable[[Any], str]) -> AfterValidator:
    def check(value: Any) -> Any:
        if value is not None and not passes(value):
            raise ValueError(text(value))
        return value

    return AfterValidator(check)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, dt.date):  # YAML reads an unquoted 2026-06-15 as a date
        return f"the date {value.isoformat()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return visible(repr(value), 80)


_CONTROL = re.compile(CONTROL_CHARACTERS)
_plain = _rule(
    lambda v: not _CONTROL.search(v),
    lambda v: "holds a line break or another control character (shown as <...>): " + visible(v, 80),
)
_not_empty = _rule(bool, lambda v: "must not be empty")


def _none_is_empty(value: Any) -> Any:
    """`key:` with nothing after it (or only commented-out items) is an empty list."""
    return [] if value is None else value


def _number_as_text(value: Any) -> Any:
    """A grade may be written as a number (`grades: [K, 1, 2]`, `grade: 5`)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _grade(value: str) -> str:
    text = value.upper()
    text = text[1:] if len(text) == 2 and text.startswith("0") else text
    if text not in GRADE_ORDER:
        raise ValueError(f"must be K or 1 to 12, got {value!r}")
    return text


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"must be a time zone such as America/Chicago (unknown timezone {value!r})"
        ) from exc
    return value


def _encoding(value: str) -> str:
    try:
        canonical = ENCODINGS.get(codecs.lookup(value).name)
    except LookupError:
        canonical = None
    if canonical is None:
        raise ValueError(f"must be one of {', '.join(ENCODINGS.values())}, got {value!r}")
    return canonical


def _clock(value: Any) -> dt.time | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 06:00 as the sexagesimal number 360
        value = f"{value // 60:02d}:{value % 60:02d}"
    if isinstance(value, str):
        try:
            return dt.time.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f'must be a local time "HH:MM", got {_shown(value)}')


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date(value: Any) -> dt.date:
    """A local date: unquoted `2026-06-15` (YAML reads it as a date) or the same text quoted.
    Not a date and time, a number or another spelling (`06/15/2026`, `20260615`)."""
    if isinstance(value, dt.datetime):
        raise ValueError(
            f"must be a date YYYY-MM-DD without a time of day, got {value.isoformat(' ')}"
        )
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"must be a date YYYY-MM-DD, got {visible(repr(value), 40)}: there is no such day"
            ) from None
    raise ValueError(f"must be a date YYYY-MM-DD, got {_shown(value)}")


def _grade_order(grades: list[str]) -> tuple[str, ...]:
    return tuple(g for g in GRADE_ORDER if g in set(grades))


Text = Annotated[str, _not_empty, _plain]
PlainText = Annotated[str, _plain]
DistrictCode = Annotated[
    Text,
    _rule(
        lambda v: re.fullmatch(r"[A-Za-z0-9_-]{1,32}", v) is not None,
        lambda v: f"must be 1 to 32 characters of A-Z a-z 0-9 _ and -, got {v!r}",
    ),
]
SchoolCode = Annotated[
    Text,
    _rule(
        lambda v: len(v) <= MAX_LENGTH["school_code"],
        lambda v: f"is longer than {MAX_LENGTH['school_code']} characters",
    ),
]
Email = Annotated[
    str,
    _rule(
        lambda v: len(v) <= MAX_LENGTH["email"] and re.fullmatch(EMAIL_PATTERN, v) is not None,
        lambda v: f"is not a valid email address: {visible(repr(v), 80)}",
    ),
]
Emails = Annotated[list[Email], BeforeValidator(_none_is_empty)]
Count = Annotated[int, Field(ge=0, le=2_147_483_647)]
Grade = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_grade)]
ClockTime = Annotated[dt.time | None, BeforeValidator(_clock)]
Date = Annotated[dt.date, BeforeValidator(_date)]
# a student's column: text as an upload's value, trimmed, empty = absent; the column rules
# are the upload's own (validate_rows), run once on the students of all districts
Column = Annotated[str | None, AfterValidator(lambda v: v or None)]
GradeColumn = Annotated[
    str | None, BeforeValidator(_number_as_text), AfterValidator(lambda v: v or None)
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)


class _Sftp(_Strict):
    host: Text
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    username: Text
    password_env: Text | None = None
    private_key_file: Text | None = None
    host_key: Text
    root: Text = "/"


class _EnterpriseOrder(_Strict):
    number: Text
    licenses: Count


class _RegularOrder(_Strict):
    number: Text
    school: SchoolCode | None = None
    licenses: Count


class _School(_Strict):
    code: SchoolCode
    name: PlainText = ""
    active: bool = True


class _Student(_Strict):
    student_id: Column = None
    school: Column = None
    last_name: Column = None
    first_name: Column = None
    middle_name: Column = None
    grade: GradeColumn = None
    username: Column = None
    email: Column = None
    class_name: Column = None
    order: Text | None = None
    status: Literal["active", "deactivated"] = "active"


class _Pause(_Strict):
    start: Date = Field(alias="from")
    end: Date = Field(alias="to")


class _District(_Strict):
    code: DistrictCode
    name: Text
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    contacts: Emails = []
    failure_contacts: Emails = []
    sftp: _Sftp | None = None
    holding_bin_school: SchoolCode
    enterprise_order: _EnterpriseOrder
    schools: Annotated[list[_School], Field(min_length=1)]
    regular_orders: Annotated[list[_RegularOrder], BeforeValidator(_none_is_empty)] = []
    existing_students: Annotated[list[_Student], BeforeValidator(_none_is_empty)] = []
    process_at: ClockTime = None
    expected_by: ClockTime = None
    encoding: Annotated[str, AfterValidator(_encoding)] = DEFAULT_ENCODING
    grades: Annotated[
        list[Grade] | None, Field(min_length=1), AfterValidator(lambda g: g and _grade_order(g))
    ] = None
    guard: Any = None  # core.guard's own loader
    mode: Literal["incremental", "full_roster"] = "incremental"
    pauses: Annotated[list[_Pause], BeforeValidator(_none_is_empty)] = []
    # below how many available Enterprise licenses the district is alerted (None: 5%)
    low_licenses: Count | None = None
    account_managers: Emails = []  # in copy of the low-licenses alert


# the model of each kind of mapping, by its path in a district (list indexes left out)
_MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    (): _District,
    ("sftp",): _Sftp,
    ("enterprise_order",): _EnterpriseOrder,
    ("regular_orders",): _RegularOrder,
    ("schools",): _School,
    ("existing_students",): _Student,
    ("pauses",): _Pause,
}
# lists of named things: how a message names an item, and by which key
_ITEMS = {
    "schools": ("school", "code"),
    "regular_orders": ("regular order", "number"),
    "existing_students": ("student", "student_id"),
}
_SUBMAPPINGS = ("sftp", "enterprise_order", "guard")
# a student's key for each template column (status and password are not keys)
_STUDENT_KEY = {column: column for column in COLUMNS} | {"school_code": "school"}


# -- where: line, who, key -----------------------------------------------------------------


class _Locator:
    """(line, who, key) of a path in one district's mapping, for messages."""

    def __init__(self, raw: YamlMapping, name: str) -> None:
        self.raw, self.name = raw, name

    def __call__(self, loc: tuple[Any, ...]) -> tuple[int, str, str]:
        node: Any = self.raw
        who, rest = self.name, tuple(loc)
        head = loc[0] if loc else None
        if head in _ITEMS and len(loc) > 2 and isinstance(loc[1], int):
            item = _at(self.raw.get(head), loc[1])
            if isinstance(item, YamlMapping):
                label, id_key = _ITEMS[head]
                ident = item.get(id_key)
                ident = ident.strip() if isinstance(ident, str) else ""
                who = f"{self.name} {label} {ident or f'#{loc[1] + 1}'}"
                node, rest = item, loc[2:]
        elif head in _SUBMAPPINGS and len(loc) > 1 and isinstance(self.raw.get(head), YamlMapping):
            who, node, rest = f"{self.name} {head}", self.raw[head], loc[1:]
        line = getattr(node, "line", 0)
        for part in rest:
            in_mapping = isinstance(node, YamlMapping) and part in node.lines
            in_list = isinstance(node, YamlList) and isinstance(part, int) and part < len(node)
            if not (in_mapping or in_list):
                break
            line, node = node.lines[part], node[part]
        return line, who, _key(rest)

    def problem(self, loc: tuple[Any, ...], text: str) -> Problem:
        line, who, _ = self(loc)
        return Problem(line, who, text)


def _at(items: Any, index: int) -> Any:
    return items[index] if isinstance(items, list) and 0 <= index < len(items) else None


def _key(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _known_keys_message(key: Any, known: list[str]) -> str:
    near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f" (did you mean `{near[0]}`?)" if near else ""
    return f"unknown key `{key}`{hint}; known keys: {', '.join(known)}"


def _described(error: Any, key: str) -> str:
    """A pydantic error in words, naming the key (`contacts must be a list, got ...`)."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = f", got {_shown(value)}"
    if kind == "missing":
        return f"`{key}` is required"
    if kind == "string_type":
        quote = ""
        if isinstance(value, bool | int | float):
            quote = (
                ": put it in quotes (YAML reads an unquoted 0101 as the number 65, "
                "yes and no as true and false)"
            )
        return f"{key} must be text{got}{quote}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{key} must be a whole number{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{key} must be true or false (without quotes){got}"
    if kind == "list_type":
        return f"{key} must be a list (one `- ` line per item, or [a, b]){got}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{key} must be a mapping (one `key: value` line each){got}"
    if kind == "literal_error":
        return f"{key} must be one of {ctx.get('expected')}{got}"
    if kind == "greater_than_equal":
        return f"{key} must be at least {ctx.get('ge')}{got}"
    if kind == "less_than_equal":
        return f"{key} must be at most {ctx.get('le')}{got}"
    if kind == "too_short":
        return f"{key} must not be empty"
    if kind == "value_error":
        return f"{key} {ctx.get('error')}"
    return f"{key}: {error['msg']}{got}"


def _duplicates(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple, Any, int, int]]:
    """(path, key, line, line of the first) of every key given twice under `node`."""
    if isinstance(node, YamlMapping):
        for key, line, first in node.duplicates:
            yield path, key, line, first
        for key, value in node.items():
            yield from _duplicates(value, (*path, key))
    elif isinstance(node, YamlList):
        for index, value in enumerate(node):
            yield from _duplicates(value, (*path, index))


# -- the file ------------------------------------------------------------------------------


def parse(text: str) -> list[DistrictSpec]:
    """Every district of the file, or MasterDataError listing every problem found."""
    doc = load_yaml(text)
    problems: list[Problem] = []
    if doc is None:
        doc = YamlMapping(1)
    if not isinstance(doc, YamlMapping):
        raise MasterDataError([Problem(1, "the file", "must be a mapping with `districts:`")])
    for key, line, first in doc.duplicates:
        problems.append(Problem(line, "the file", f"duplicate key `{key}` (first at line {first})"))
    for key in doc:
        if key != "districts":
            problems.append(
                Problem(doc.lines[key], "the file", _known_keys_message(key, ["districts"]))
            )
    items = doc.get("districts")
    if not isinstance(items, YamlList):
        line = doc.lines.get("districts", doc.line)
        problems.append(Problem(line, "the file", "must have a top-level `districts:` list"))
        raise MasterDataError(problems)
    valid: list[tuple[_District, _Locator]] = []
    for index, raw in enumerate(items):
        if not isinstance(raw, YamlMapping):
            problems.append(Problem(items.lines[index], f"districts[{index}]", "must be a mapping"))
            continue
        model = _district(raw, index, problems)
        if model is not None:
            valid.append(model)
    # the upload's column rules, on the students of all districts at once
    grades = _column_rules(valid, problems)
    districts = [_checked(m, at, problems, grades[k]) for k, (m, at) in enumerate(valid)]
    problems += _across_districts(districts)
    if problems:
        raise MasterDataError(problems)
    return districts


def _district(
    raw: YamlMapping, index: int, problems: list[Problem]
) -> tuple[_District, _Locator] | None:
    """The district's model (and where its keys are), or None when its types are wrong."""
    code = raw.get("code")
    name = f"district {code.strip()}" if isinstance(code, str) and code.strip() else None
    at = _Locator(raw, name or f"district #{index + 1}")
    for path, key, line, first in _duplicates(raw):
        _, who, _ = at((*path, key))
        problems.append(
            Problem(line, who, f"duplicate key `{key}` (first at line {first}): give it once")
        )
    try:
        return _District.model_validate(raw), at
    except PydanticError as exc:
        problems.extend(_problem(at, error) for error in exc.errors())
        return None


def _column_rules(
    districts: list[tuple[_District, _Locator]], problems: list[Problem]
) -> list[list[str | None]]:
    """The existing students of every district through the upload's column rules
    (core.validation's schema, on one frame of them all: its cost is mostly per call), and
    each one's grade as stored (normalised by core.validation); per district, in order."""
    rows = [
        (k, j, s) for k, (m, _) in enumerate(districts) for j, s in enumerate(m.existing_students)
    ]
    if not rows:
        return [[] for _ in districts]

    def value(s: _Student, column: str) -> str | None:
        if column == "password":
            return None
        if column == "status":
            return "A" if s.status == "active" else "D"
        return getattr(s, _STUDENT_KEY[column])

    frame = pd.DataFrame(
        {
            column: pd.array([value(s, column) for _, _, s in rows], dtype="str")
            for column in COLUMNS
        }
    )
    frame.insert(0, "line", [districts[k][1](("existing_students", j))[0] for k, j, _ in rows])
    key_of = {DISPLAY_NAME[c]: _STUDENT_KEY[c] for c in COLUMNS}
    broken = validate_rows(frame)
    for row, column, code, message in broken[["row", "column", "code", "message"]].itertuples(
        index=False
    ):
        k, j, _ = rows[row]
        key = key_of[column]
        problems.append(
            districts[k][1].problem(("existing_students", j, key), f"{key}: {message} ({code})")
        )
    grades: list[list[str | None]] = [[] for _ in districts]
    for (k, _, _), grade in zip(rows, normalise(frame)["grade"], strict=True):
        grades[k].append(grade if isinstance(grade, str) else None)
    return grades


def _problem(at: _Locator, error: Any) -> Problem:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        line, who, _ = at(loc)
        model = _MODELS.get(tuple(p for p in loc[:-1] if not isinstance(p, int)), _District)
        known = sorted(f.alias or name for name, f in model.model_fields.items())
        return Problem(line, who, _known_keys_message(loc[-1], known))
    line, who, key = at(loc)
    return Problem(line, who, _described(error, key))


def _checked(
    m: _District, at: _Locator, problems: list[Problem], grades: list[str | None]
) -> DistrictSpec:
    """The district's relations (schools, orders, students), then its spec."""
    raw = at.raw
    schools: dict[str, int] = {}
    for j, school in enumerate(m.schools):
        if school.code in schools:
            problems.append(
                at.problem(
                    ("schools", j, "code"),
                    f"school code {school.code} appears twice "
                    f"(first at line {at(('schools', schools[school.code]))[0]})",
                )
            )
        schools.setdefault(school.code, j)
    if m.holding_bin_school not in schools:
        problems.append(
            at.problem(
                ("holding_bin_school",),
                f"holding_bin_school {m.holding_bin_school} is not in `schools`",
            )
        )
    orders = {m.enterprise_order.number: at(("enterprise_order",))[0]}
    for j, order in enumerate(m.regular_orders):
        if order.number in orders:
            problems.append(
                at.problem(
                    ("regular_orders", j, "number"),
                    f"order {order.number} appears twice (first at line {orders[order.number]})",
                )
            )
        orders.setdefault(order.number, at(("regular_orders", j))[0])
        if order.school is not None and order.school not in schools:
            problems.append(
                at.problem(
                    ("regular_orders", j, "school"),
                    f"order {order.number} names unknown school {order.school}",
                )
            )
    if m.sftp is not None and not (m.sftp.password_env or m.sftp.private_key_file):
        problems.append(at.problem(("sftp",), "sftp needs password_env or private_key_file"))
    try:
        guard = parse_thresholds(m.guard, "guard")
    except GuardConfigError as exc:
        problems.append(at.problem(("guard",), str(exc)))
        guard = None
    if m.low_licenses is not None and m.low_licenses > m.enterprise_order.licenses:
        problems.append(
            at.problem(
                ("low_licenses",),
                f"low_licenses {m.low_licenses} is more than the Enterprise order's "
                f"{m.enterprise_order.licenses} licenses: the district would be alerted "
                "every day; give at most the order's size (0: no alert by count)",
            )
        )
    students = _students(m, at, problems, grades)
    pauses = _pauses(m, at, problems)

    def line(*loc: Any) -> int:
        return at(loc)[0]

    sftp = m.sftp
    return DistrictSpec(
        code=m.code,
        name=m.name,
        timezone=m.timezone,
        contacts=tuple(m.contacts),
        holding_bin_school=m.holding_bin_school,
        enterprise_order=OrderSpec(
            m.enterprise_order.number,
            m.enterprise_order.licenses,
            m.holding_bin_school,
            line=line("enterprise_order", "licenses"),
        ),
        schools=tuple(
            SchoolSpec(s.code, s.name, s.active, line=line("schools", j))
            for j, s in enumerate(m.schools)
        ),
        regular_orders=tuple(
            OrderSpec(o.number, o.licenses, o.school, line=line("regular_orders", j, "licenses"))
            for j, o in enumerate(m.regular_orders)
        ),
        existing_students=students,
        sftp=SftpAccount(
            host=sftp.host,
            port=sftp.port,
            username=sftp.username,
            host_key=sftp.host_key,
            root=normalise_root(sftp.root),
            password_env=sftp.password_env,
            private_key_file=sftp.private_key_file,
        )
        if sftp is not None
        else None,
        process_at=m.process_at,
        expected_by=m.expected_by,
        encoding=m.encoding,
        grades=m.grades,  # type: ignore[arg-type]  # put in school order by its validator
        failure_contacts=tuple(m.failure_contacts),
        guard=guard,
        mode=m.mode,
        pauses=pauses,
        low_licenses=m.low_licenses,
        account_managers=tuple(m.account_managers),
        line=raw.line,
        lines={k: v for k, v in raw.lines.items() if isinstance(k, str)},
    )


def _pauses(m: _District, at: _Locator, problems: list[Problem]) -> tuple[Pause, ...]:
    """The district's pauses in date order: each from <= to, no day in two pauses."""
    valid: list[tuple[int, Pause]] = []
    for j, p in enumerate(m.pauses):
        if p.start > p.end:
            problems.append(
                at.problem(
                    ("pauses", j, "to"),
                    f"pauses[{j}]: to {p.end} is before from {p.start}: a pause runs from its "
                    "first day to its last (both included)",
                )
            )
        else:
            valid.append((j, Pause(p.start, p.end)))
    listed = [p for _, p in valid]
    for a, b in overlaps(listed):
        (i, first), (j, second) = valid[a], valid[b]
        problems.append(
            at.problem(
                ("pauses", j),
                f"pauses[{j}] ({second}) overlaps pauses[{i}] ({first}, line "
                f"{at(('pauses', i))[0]}): give each day in one pause only",
            )
        )
    return tuple(sorted(listed))


def _students(
    m: _District, at: _Locator, problems: list[Problem], grades: list[str | None]
) -> tuple[ExistingStudentSpec, ...]:
    """The district's existing students (their column rules are run by _column_rules),
    each Student ID and username once, schools and orders known. The rules of a new
    student's placement (core.master_data.new_student_problems) need to know which
    students are stored: db.setup runs them."""
    if not m.existing_students:
        return ()
    rows = m.existing_students
    raw_students = at.raw.get("existing_students")

    def raw_lines(j: int) -> dict[Any, int]:
        item = _at(raw_students, j)
        return item.lines if isinstance(item, YamlMapping) else {}

    schools = {s.code for s in m.schools}
    orders = {m.enterprise_order.number, *(o.number for o in m.regular_orders)}
    first: dict[str, tuple[int, int]] = {}  # Student ID -> (index, line)
    usernames: dict[str, tuple[int, str | None, int]] = {}  # lower -> (index, ID, line)
    out = []
    for j, s in enumerate(rows):
        line = at(("existing_students", j))[0]

        def refuse(key: str, text: str, j: int = j) -> None:
            problems.append(at.problem(("existing_students", j, key), text))

        if s.student_id is not None:
            seen = first.setdefault(s.student_id, (j, line))
            if seen[0] != j:
                refuse(
                    "student_id",
                    f"student_id {s.student_id} appears twice (first at line {seen[1]})",
                )
        if s.username is not None:
            holder = usernames.setdefault(s.username.lower(), (j, s.student_id, line))
            if holder[0] != j:
                refuse(
                    "username",
                    f"username {s.username} is also student {holder[1]}'s (line {holder[2]}); "
                    "a username is unique across MY Access (without regard to case)",
                )
        if s.school is not None and s.school not in schools:
            refuse("school", f"unknown school {s.school}")
        if s.order is not None and s.order not in orders:
            refuse("order", f"unknown order {s.order}")
        grade = grades[j]
        out.append(
            ExistingStudentSpec(
                student_id=s.student_id or "",
                school=s.school or "",
                last_name=s.last_name or "",
                first_name=s.first_name or "",
                grade=grade or "",
                username=s.username or "",
                order=s.order,
                status=s.status,
                middle_name=s.middle_name,
                email=s.email,
                class_name=s.class_name,
                line=line,
                lines={k: v for k, v in raw_lines(j).items() if isinstance(k, str)},
            )
        )
    return tuple(out)


def _across_districts(districts: list[DistrictSpec]) -> list[Problem]:
    """What one district of the file may not share with another: its code, its order
    numbers, its students' usernames (of all MY Access), its SFTP directory."""
    problems: list[Problem] = []
    codes: dict[str, int] = {}
    orders: dict[str, tuple[str, int]] = {}
    usernames: dict[str, tuple[str, str, int]] = {}
    for d in districts:
        if d.code in codes:
            problems.append(
                Problem(
                    d.line_of("code"),
                    f"district {d.code}",
                    f"district code {d.code} appears twice (first at line {codes[d.code]})",
                )
            )
            continue
        codes[d.code] = d.line_of("code")
        for order in (d.enterprise_order, *d.regular_orders):
            owner = orders.get(order.number)
            if owner is not None and owner[0] != d.code:
                problems.append(
                    Problem(
                        order.line,
                        f"district {d.code}",
                        f"order {order.number} belongs to district {owner[0]} (line {owner[1]}); "
                        "an order number can belong to one district only",
                    )
                )
            orders.setdefault(order.number, (d.code, order.line))
        for s in d.existing_students:
            if not s.username:
                continue
            holder = usernames.get(s.username.lower())
            if holder is not None and holder[0] == d.code:
                continue  # within one district: found with its students
            if holder is not None:
                other = f" of district {holder[0]}"
                problems.append(
                    Problem(
                        s.line,
                        f"district {d.code} student {s.student_id}",
                        f"username {s.username} is also student {holder[1]}'s{other} "
                        f"(line {holder[2]}); a username is unique across MY Access "
                        "(without regard to case)",
                    )
                )
            else:
                usernames[s.username.lower()] = (d.code, s.student_id, s.line)
    problems += sftp_conflict_problems(
        AccountUse(d.code, d.sftp, f"line {d.line_of('sftp')}", d.line_of("sftp"))
        for d in districts
        if d.sftp is not None
    )
    return problems
