"""Numbered plain-SQL migrations in `sql/`, applied in order, once each, and recorded.

A migration file that was applied must never change: its checksum is recorded and a
mismatch stops the upgrade. Each file runs in its own transaction; an advisory lock keeps
two upgrades from running at once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from eams_pipeline.config import sql_dir

SQL_DIR = sql_dir()
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x6561_6D73  # "eams"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def available(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_description.sql")
        found.append(Migration(match.group(1), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number in {sql_dir}")
    return found


def upgrade(conn: psycopg.Connection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the missing migrations; return the versions applied (empty when up to date)."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    text PRIMARY KEY,
                   filename   text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        for migration in available(sql_dir):
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"{migration.path.name} changed after it was applied; add a new "
                        "migration instead of editing an applied one"
                    )
                continue
            with conn.transaction():
                conn.execute(migration.text)
                conn.execute(
                    "INSERT INTO schema_migrations (version, filename, checksum) VALUES (%s,%s,%s)",
                    (migration.version, migration.path.name, migration.checksum),
                )
            applied_now.append(migration.version)
    return applied_now
