"""`eams` as a user or a script runs it (real processes): what it says and exits with when
two runs race, when the database URL is malformed, when a file name is not UTF-8, and
when an argument is huge."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from eams_pipeline.core.names import make_upload_key
from eams_pipeline_tests.builders import csv_bytes, district_doc, load, row, run, students

EXIT_SUPERSEDED = 4


def _env(url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "EAMS_DATABASE_URL": url, **extra}


def eams(*args: str, cwd: Path, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", *args],
        cwd=cwd,
        env=_env(url, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _wait_for_a_lock_wait(watch: psycopg.Connection, seconds: float = 60) -> None:
    """Until a backend of this database waits for a lock (the `eams process` started)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        waiting = watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone()[0]
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("eams process never waited for the district's lock")


def test_a_process_superseded_by_a_later_one_exits_4_and_names_it(
    db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url) as conn:
        load(conn, district_doc())
    first = tmp_path / "first.csv"
    first.write_bytes(csv_bytes([row("A1")]))
    with (
        psycopg.connect(db_url) as holder,
        psycopg.connect(db_url, autocommit=True) as watch,
    ):
        with holder.transaction():
            # the district is locked: the first `eams process` (its upload received now)
            # waits for it while a later upload of the district is applied and committed
            holder.execute("SELECT 1 FROM districts WHERE code = 'D1' FOR UPDATE")
            started = subprocess.Popen(
                [
                    *(sys.executable, "-m", "eams_pipeline.cli", "process", "--district", "D1"),
                    *(str(first), "--errors-out", str(tmp_path / "errors.csv")),
                ],
                cwd=tmp_path,
                env=_env(db_url),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _wait_for_a_lock_wait(watch)
                later_key = make_upload_key("D1", dt.datetime.now(dt.UTC))
                later = run(holder, [row("B1")], key=later_key, received_at=dt.datetime.now(dt.UTC))
                assert later.status == "processed"
            except BaseException:
                started.kill()
                raise
        out, err = started.communicate(timeout=120)
    assert started.returncode == EXIT_SUPERSEDED, err
    summary = json.loads(out)
    assert summary["status"] == "superseded"
    assert later_key in err and "not applied" in err
    with psycopg.connect(db_url) as conn:
        assert set(students(conn)) == {"B1"}  # the first file applied nothing


SECRET = "S3cretPw9"


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        (f"postgresql://eams:{SECRET}@[::1/eams", (SECRET,)),  # libpq quotes the whole URI
        (f"postgresql://eams:{SECRET}%zz@127.0.0.1/eams", (SECRET,)),  # a bad %-escape
        (f"postgresql://eams:{SECRET}@127.0.0.1:notaport/eams", (SECRET,)),
        (f"postgresql://127.0.0.1/eams?password={SECRET}&bogus=1", (SECRET,)),
        (f"host=127.0.0.1 password={SECRET} tail dbname=eams", (SECRET, '"tail"')),
        (f"host=127.0.0.1 password='{SECRET} x' dbname", (SECRET,)),
    ],
    ids=["ipv6", "percent", "port", "query", "keyword-with-a-space", "keyword-quoted"],
)
@pytest.mark.parametrize("command", [("export", "students", "--district", "D1"), ("db", "upgrade")])
def test_a_malformed_database_url_never_echoes_its_password(
    tmp_path: Path, url: str, hidden: tuple[str, ...], command: tuple[str, ...]
) -> None:
    done = eams(*command, cwd=tmp_path, url=url)
    assert done.returncode == 1
    output = done.stdout + done.stderr
    for secret in hidden:
        assert secret not in output, output
    assert "EAMS_DATABASE_URL is not a valid connection string" in done.stderr
    if "[" in url:  # the URI is quoted, its password masked
        assert "postgresql://eams:***@[::1/eams" in done.stderr


def test_a_file_name_that_is_not_utf8_is_refused_before_any_work(
    db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url) as conn:
        load(conn, district_doc())
    name = b"students-\xe9t\xe9.csv"  # Latin-1 bytes: not UTF-8
    (tmp_path / os.fsdecode(name)).write_bytes(csv_bytes([row("N1"), row("N2")]))
    done = subprocess.run(
        [
            *(sys.executable.encode(), b"-m", b"eams_pipeline.cli", b"process"),
            *(b"--district", b"D1", bytes(tmp_path) + b"/" + name),
        ],
        cwd=tmp_path,
        env=_env(db_url),
        capture_output=True,
        timeout=120,
        check=False,
    )
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, err
    assert "students-\\xe9t\\xe9.csv" in err and "not UTF-8" in err
    assert "codec" not in err and done.stdout == b""
    with psycopg.connect(db_url) as conn:  # nothing was recorded, no password was hashed
        assert conn.execute("SELECT count(*) FROM uploads").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM password_hash_cache").fetchone()[0] == 0


def test_an_upload_whose_name_is_not_utf8_is_refused_when_it_is_made() -> None:
    from eams_pipeline.services.process import Upload

    with pytest.raises(ValueError, match=r"the file name a\\xff\.csv is not UTF-8"):
        Upload("D1", b"", file_name=os.fsdecode(b"a\xff.csv"))


HUGE = "X" * 100_000


@pytest.mark.parametrize(
    "args",
    [
        ("process", "--district", HUGE, "{file}"),
        ("export", "students", "--district", HUGE),
        ("uploads", "list", "--district", HUGE),
        ("uploads", "show", HUGE),
        ("uploads", "discard", HUGE, "--no-email"),
        ("history", "--district", "D1", "--student", HUGE),
        (HUGE,),  # not a command
    ],
    ids=["process", "export", "uploads-list", "uploads-show", "discard", "history", "command"],
)
def test_a_huge_argument_is_echoed_capped(
    db_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    with psycopg.connect(db_url) as conn:
        load(conn, district_doc())
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1")]))
    done = eams(*(a.format(file=upload) for a in args), cwd=tmp_path, url=db_url)
    assert done.returncode == 1
    assert 0 < len(done.stderr) < 2000, done.stderr[:3000]
    assert "XXXXXXXXXX" in done.stderr  # what was given is still recognisable
    assert done.stdout == ""
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM uploads").fetchone()[0] == 0
