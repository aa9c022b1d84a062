"""Opening connections to the MY Access database named by EAMS_DATABASE_URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eams_pipeline.config import database_url


def connect(url: str | None = None, *, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(url or database_url(), autocommit=autocommit)


def create_database_if_missing(url: str | None = None) -> bool:
    """CREATE DATABASE for the URL's database when it does not exist. True if created."""
    params = conninfo_to_dict(url or database_url())
    name = params.get("dbname") or "postgres"
    admin = make_conninfo(url or database_url(), dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


@contextmanager
def local_settings(conn: psycopg.Connection, settings: dict[str, str]) -> Iterator[None]:
    """Settings (planner switches) for the statements run inside, as SET LOCAL would give
    them for the transaction, and the previous values back after them. Put back only after
    success: a failed statement aborts the transaction, which takes the settings with it,
    and a statement sent then would hide the error."""
    if not settings:
        yield
        return
    names = list(settings)
    calls = ", ".join(["set_config(%s, %s, true)"] * len(names))
    before = conn.execute(
        "SELECT " + ", ".join(["current_setting(%s)"] * len(names)), names
    ).fetchone()
    conn.execute("SELECT " + calls, [v for n in names for v in (n, settings[n])])
    yield
    conn.execute(
        "SELECT " + calls, [v for n, old in zip(names, before, strict=True) for v in (n, old)]
    )
