"""One vocabulary: the database's CHECK constraints list exactly the code's enums, and only
`eams_pipeline/config.py` reads the environment."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from eams_pipeline.core.errors import ErrorCode
from eams_pipeline.core.outcome import UploadKind, UploadStatus

PACKAGE = Path(__file__).resolve().parents[2] / "eams_pipeline"


def _check_values(conn: psycopg.Connection, table: str, constraint: str) -> set[str]:
    definition = conn.execute(
        """SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
           JOIN pg_class t ON t.oid = c.conrelid WHERE t.relname = %s AND c.conname = %s""",
        (table, constraint),
    ).fetchone()
    assert definition is not None, f"{table}.{constraint} is missing"
    return set(re.findall(r"'([^']+)'::text", definition[0]))


@pytest.mark.parametrize(
    ("table", "constraint", "enum"),
    [
        ("uploads", "uploads_status_check", UploadStatus),
        ("upload_errors", "upload_errors_error_code_check", ErrorCode),
        ("upload_requests", "upload_requests_kind_check", UploadKind),
    ],
)
def test_the_databases_check_lists_the_enum(
    conn: psycopg.Connection, table: str, constraint: str, enum: type
) -> None:
    assert _check_values(conn, table, constraint) == {m.value for m in enum}


def test_a_check_is_recorded_as_what_an_upload_can_come_to(conn: psycopg.Connection) -> None:
    values = _check_values(conn, "uploads", "uploads_checked_as_check")
    assert values == {"processed", "partially_processed", "rejected", "held"}
    assert values <= {m.value for m in UploadStatus}


def test_only_config_reads_the_environment() -> None:
    readers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"os\.environ\.get|os\.getenv|environ\[", path.read_text())
        and path.parent.name != "devtools"  # the demo sets the environment of its children
    )
    assert readers == ["config.py"]


def test_all_sql_lives_in_db() -> None:
    """Statements run only in `eams_pipeline/db/` (the demo creates its databases itself)."""
    runners = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"\.execute\(|cursor\(\)\.copy\(|COPY ", path.read_text())
        and path.parent.name not in ("db", "devtools")
    )
    assert runners == []
