"""Shared fixtures: a real PostgreSQL database per test, made from a migrated template.

The server is the local one (EAMS_TEST_ADMIN_URL, default
postgresql://postgres@127.0.0.1:5432/postgres). Each test gets its own database created
from a template that has every migration applied, and dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

# cheap password hashing and a fixed fingerprint secret for the tests (never in production)
# (the documented format: at least 32 hexadecimal digits)
os.environ.setdefault("EAMS_SECRET_KEY", "7e57" * 16)
os.environ.setdefault("EAMS_ARGON2_MEMORY_KIB", "256")
os.environ.setdefault("EAMS_ARGON2_TIME_COST", "1")

from eams_pipeline.db import migrations
from eams_pipeline_tests.admin_db import ADMIN_URL

pytest_plugins = ["eams_pipeline_tests.fixtures_servers", "eams_pipeline_tests.orchestration_env"]


def _admin() -> psycopg.Connection:
    return psycopg.connect(ADMIN_URL, autocommit=True)


def _drop(name: str) -> None:
    with _admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_db(worker_id: str) -> Iterator[str]:
    name = f"eams_test_tpl_{worker_id}_{os.getpid()}"
    _drop(name)
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(make_conninfo(ADMIN_URL, dbname=name)) as conn:
        migrations.upgrade(conn)
    yield name
    _drop(name)


@pytest.fixture
def db_url(template_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh migrated database; EAMS_DATABASE_URL points at it for the test."""
    name = f"eams_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    url = make_conninfo(ADMIN_URL, dbname=name)
    monkeypatch.setenv("EAMS_DATABASE_URL", url)
    yield url
    _drop(name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url) as connection:
        yield connection


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    """xdist's worker name, or 'main' when the tests run in one process."""
    workerinput = getattr(request.config, "workerinput", None)
    return workerinput["workerid"] if workerinput else "main"
