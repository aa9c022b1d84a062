"""Opening connections to the MY Access database named by EAMS_DATABASE_URL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eams_pipeline.config import database_url


def connect(url: str | None = None, *, autocommit: bool = False) -> psycopg.Connection:
    """A connection to `url` (default EAMS_DATABASE_URL). A failure's message never holds
    the URL's password (libpq quotes a malformed URL whole: see `_masked`)."""
    return _connect(url or database_url(), autocommit=autocommit, named=url is None)


def _connect(target: str, *, autocommit: bool, named: bool) -> psycopg.Connection:
    failure = None
    try:
        return psycopg.connect(target, autocommit=autocommit)
    except psycopg.Error as exc:
        failure = _masked(exc, target, named=named)
    raise failure  # outside the handler: the original is not chained to it


def create_database_if_missing(url: str | None = None) -> bool:
    """CREATE DATABASE for the URL's database when it does not exist. True if created."""
    target = url or database_url()
    failure = None
    try:
        params = conninfo_to_dict(target)
        admin = make_conninfo(target, dbname="postgres")
    except psycopg.Error as exc:
        failure = _masked(exc, target, named=url is None)
    if failure is not None:
        raise failure
    name = params.get("dbname") or "postgres"
    with _connect(admin, autocommit=True, named=url is None) as conn:
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


# where a connection string holds a password: a URI's user info (`scheme://user:pw@`, up
# to the first @ before any /), a `password=` query parameter, a `password=` keyword
# (quoted or not; the words after an unquoted one, up to the next keyword, in case the
# password had a space: libpq then names them as keywords missing an "=")
_URI_USERINFO = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://([^/@]*)@")
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)")
_KEYWORD_PASSWORD = re.compile(
    r"(?:^|\s)password\s*=\s*('(?:\\.|[^'\\])*'?|\S*)((?:\s+[^\s=']+(?=\s|$))*)"
)
MASK = "***"


def url_secrets(url: str) -> list[str]:
    """The password of a connection string (URI or keywords) in every form a message could
    quote it (as written, %-decoded, unquoted), longest first; loose words after a
    keyword password as `"word"`, as libpq quotes them."""
    found: set[str] = set()
    userinfo = _URI_USERINFO.match(url)
    if userinfo and ":" in userinfo[1]:
        found.add(userinfo[1].split(":", 1)[1])
    found.update(_QUERY_PASSWORD.findall(url))
    for value, words in _KEYWORD_PASSWORD.findall(url):
        found.add(value)
        if value.startswith("'"):
            found.add(value.strip("'").replace("\\'", "'").replace("\\\\", "\\"))
        found.update(f'"{word}"' for word in words.split())
    found.update([unquote(f) for f in found])
    return sorted((f for f in found if f), key=len, reverse=True)


def _masked(exc: psycopg.Error, url: str, *, named: bool = False) -> psycopg.Error:
    """`exc` again, its message without the URL's password (as MASK); the same exception
    class, so callers catch what they caught before. A connection string that libpq cannot
    parse is named (as EAMS_DATABASE_URL when `named`: it came from there)."""
    message = str(exc)
    for secret in url_secrets(url):
        message = message.replace(secret, f'"{MASK}"' if secret.startswith('"') else MASK)
    if isinstance(exc, psycopg.ProgrammingError) or "connection option" in message:
        name = "EAMS_DATABASE_URL" if named else "the database URL"
        message = f"{name} is not a valid connection string: {message}"
    return type(exc)(message)


def snapshot_transaction(conn: psycopg.Connection) -> None:
    """Make the transaction just begun one REPEATABLE READ snapshot (a dry run's: its reads
    agree with each other without any lock; it writes only temporary tables and is rolled
    back). Must be its first statement."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
