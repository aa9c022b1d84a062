"""The students.csv template: column names as the district sees them and as the code uses them."""

from __future__ import annotations

from pathlib import Path

# (template header name, internal column name), in template order
TEMPLATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("School Code", "school_code"),
    ("Student ID", "student_id"),
    ("Last Name", "last_name"),
    ("First Name", "first_name"),
    ("Middle Name", "middle_name"),
    ("Grade", "grade"),
    ("Username", "username"),
    ("Password", "password"),
    ("Email", "email"),
    ("Class Name", "class_name"),
    ("Status", "status"),
)

HEADER: tuple[str, ...] = tuple(name for name, _ in TEMPLATE_COLUMNS)
COLUMNS: tuple[str, ...] = tuple(col for _, col in TEMPLATE_COLUMNS)
DISPLAY_NAME: dict[str, str] = {col: name for name, col in TEMPLATE_COLUMNS}

# "Data updated" covers every template column except Status and Password (SPEC §4).
DATA_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("status", "password"))

EXPECTED_FIELD_COUNT = len(HEADER)


def template_header_line() -> str:
    return ",".join(HEADER)


def check_template_file(path: Path) -> bool:
    """True when a copy of students-template.csv matches the header compiled in here."""
    first = path.read_text(encoding="utf-8-sig").splitlines()[0]
    return tuple(part.strip() for part in first.split(",")) == HEADER
