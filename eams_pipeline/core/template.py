"""The students.csv template: column names as the district sees them and as the code uses them."""

from __future__ import annotations

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

# column rules of SPEC §3 that are regular expressions (core.validation runs them; the
# reader recognises a student row's Student ID and Grade with them)
STUDENT_ID_PATTERN = r"^[A-Za-z0-9._-]+$"
USERNAME_PATTERN = r"^[A-Za-z0-9._@-]{3,}$"
GRADE_PATTERN = r"^(?:[Kk]|0?[1-9]|1[0-2])$"
# IGNORE (the seed's own label for I), any case, is read as I
STATUS_PATTERN = r"^(?:[AaDdXxIi]|[Ii][Gg][Nn][Oo][Rr][Ee])$"
