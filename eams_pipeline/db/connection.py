"""Opening connections to the MY Access database named by EAMS_DATABASE_URL."""

from __future__ import annotations

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
