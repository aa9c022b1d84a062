"""`eams setup load` validates master data as strictly as an upload: one YAML mapping per
district, strict types, each error naming the district, the key and the line; a district's
SFTP account is its own; nothing is changed when anything is wrong."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from eams_pipeline import cli
from eams_pipeline.core.master_data import MasterDataError, parse_master_data
from eams_pipeline.db.setup import load_master_data
from eams_pipeline_tests.builders import district_doc, existing_student, load, row, run, used


def _yaml(*districts: dict[str, Any]) -> str:
    return yaml.safe_dump({"districts": list(districts)}, sort_keys=False)


def _line_of(text: str, fragment: str, after: int = 0) -> int:
    """The 1-based number of the first line holding `fragment` after line `after`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if number > after and fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in the text")


def _refusal(text: str) -> str:
    with pytest.raises(MasterDataError) as info:
        parse_master_data(text)
    return str(info.value)


def _count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _sftp(username: str = "shared", root: str = "/", host: str = "sftp.example.com") -> dict:
    return {
        "host": host,
        "port": 22,
        "username": username,
        "password_env": "EAMS_SFTP_PASSWORD",
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleHostKeyOnlyForTheShape",
        "root": root,
    }


# -- one SFTP account, one district ---------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/", "/"),
        ("/a/", "/a"),  # the same directory written two ways
        ("/a", "/a/./b"),  # one inside the other
        ("/a/b/../c", "/a/c/d/"),
        ("//a", "/a"),
    ],
)
def test_two_districts_on_one_sftp_account_are_refused_naming_both(first: str, second: str) -> None:
    one = district_doc(code="D1") | {"sftp": _sftp(root=first, host="SFTP.example.com")}
    two = district_doc(code="D2") | {"sftp": _sftp(root=second)}
    two["regular_orders"][0]["number"] = "REG-D2"
    text = _yaml(one, two)
    message = _refusal(text)
    assert "district D1" in message and "district D2" in message
    assert "shared@sftp.example.com:22" in message
    assert f"line {_line_of(text, 'sftp:', after=_line_of(text, 'code: D2'))}" in message


def test_the_same_account_with_roots_apart_is_accepted(conn: psycopg.Connection) -> None:
    # "/ab" is not inside "/a": paths compare by their parts, not as strings
    one = district_doc(code="D1") | {"sftp": _sftp(root="/a")}
    two = district_doc(code="D2") | {"sftp": _sftp(root="/ab/")}
    two["regular_orders"][0]["number"] = "REG-D2"
    load(conn, one, two)
    roots = conn.execute("SELECT code, sftp_root FROM districts ORDER BY code").fetchall()
    assert roots == [("D1", "/a"), ("D2", "/ab")]  # stored normalised


def test_a_stored_district_on_the_same_account_is_refused(conn: psycopg.Connection) -> None:
    load(conn, district_doc(code="D1") | {"sftp": _sftp(root="/d")})
    two = district_doc(code="D2") | {"sftp": _sftp(root="/d/incoming/..")}
    two["regular_orders"][0]["number"] = "REG-D2"
    with pytest.raises(MasterDataError) as info:
        load(conn, two)
    message = str(info.value)
    assert "district D2" in message and "district D1 (in the database" in message
    assert _count(conn, "districts") == 1
    # the same file moving D1 to its own account is the whole resulting master data: fine
    load(conn, district_doc(code="D1") | {"sftp": _sftp("d1", root="/d")}, two)
    assert _count(conn, "districts") == 2


def test_setup_load_refuses_a_shared_account_in_words(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = tmp_path / "setup.yaml"
    setup.write_text(_yaml(district_doc(code="D1") | {"sftp": _sftp()}))
    assert cli.main(["setup", "load", str(setup)]) == 0
    two = district_doc(code="D2") | {"sftp": _sftp(root="/")}
    two["regular_orders"][0]["number"] = "REG-D2"
    setup.write_text(_yaml(two))
    capsys.readouterr()
    assert cli.main(["setup", "load", str(setup)]) == 1
    err = capsys.readouterr().err
    assert "district D2" in err and "district D1" in err and "Traceback" not in err
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT code FROM districts").fetchall() == [("D1",)]


# -- strict types, lines --------------------------------------------------------------------


def test_contacts_given_as_one_string_is_refused_with_its_line() -> None:
    doc = district_doc() | {"contacts": "admin@d3.example.org"}
    text = _yaml(doc)
    message = _refusal(text)
    line = _line_of(text, "contacts: admin@d3.example.org")
    assert f"line {line}: district D1: contacts must be a list" in message


@pytest.mark.parametrize(
    ("key", "block", "offset"),
    [
        ("name", "  name: |\n    Springfield\n    Unified\n", 1),
        ("name", "  name: >\n    Springfield\n\n    Unified\n", 1),  # a blank line: \n
        ("contacts", "  contacts:\n  - |\n    admin@d1.example.org\n    x@d1.example.org\n", 2),
    ],
)
def test_a_line_break_inside_a_name_or_contact_is_refused(
    key: str, block: str, offset: int
) -> None:
    text = _yaml(district_doc())
    kept = [line for line in text.splitlines(keepends=True) if not line.startswith(f"  {key}:")]
    if key == "contacts":
        kept = [line for line in kept if "- admin@d1.example.org" not in line]
    at = next(i for i, line in enumerate(kept) if line.startswith("- code: D1")) + 1
    text = "".join(kept[:at]) + block + "".join(kept[at:])
    message = _refusal(text)
    assert f"line {at + offset}: district D1" in message
    assert key in message


def test_a_folded_name_is_trimmed_like_an_upload_value(conn: psycopg.Connection) -> None:
    text = _yaml(district_doc()).replace(
        "  name: District D1\n", "  name: >\n    Springfield Unified\n    School District\n"
    )
    load_master_data(conn, parse_master_data(text))
    stored = conn.execute("SELECT name FROM districts").fetchone()[0]
    assert stored == "Springfield Unified School District"


def test_a_quoted_false_does_not_leave_a_school_open() -> None:
    doc = district_doc()
    doc["schools"][1]["active"] = "false"
    text = _yaml(doc)
    message = _refusal(text)
    line = _line_of(text, "active: 'false'")
    assert f"line {line}: district D1 school 101: active must be true or false" in message


@pytest.mark.parametrize(
    ("value", "shown"),
    [("0101", "65"), ("1_000", "1000"), ("yes", "true")],
)
def test_a_code_that_yaml_reads_as_a_number_must_be_quoted(value: str, shown: str) -> None:
    text = _yaml(district_doc()).replace("code: '102'", f"code: {value}")
    message = _refusal(text)
    line = _line_of(text, f"code: {value}")
    assert f"line {line}: district D1" in message and "code must be text" in message
    assert shown in message


def test_a_duplicate_key_is_refused_naming_both_lines() -> None:
    text = _yaml(district_doc())
    first = _line_of(text, "  contacts:")
    text = text.replace(
        "  holding_bin_school:", "  contacts: [other@d1.example.org]\n  holding_bin_school:"
    )
    second = _line_of(text, "  contacts: [other")
    message = _refusal(text)
    assert f"line {second}: district D1: duplicate key `contacts` (first at line {first})" in (
        message
    )


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    doc = district_doc()
    body = _yaml(doc).replace("  name: District D1", "  name: *i")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n" + body)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "eams_pipeline.cli", "setup", "load", str(bomb)],
            env={**os.environ, "EAMS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
            capture_output=True,
            text=True,
            timeout=30,
            preexec_fn=cap,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the alias bomb was expanded")
    assert done.returncode == 1, done.stderr
    assert "line 1" in done.stderr and "anchors and aliases" in done.stderr
    assert "MemoryError" not in done.stderr
    assert time.monotonic() - started < 25


def test_a_merge_key_is_refused() -> None:
    # `<<` needs an alias in practice; alone it is an unknown key, not a silent merge
    text = _yaml(district_doc()).replace("  timezone:", "  <<: {mode: full_roster}\n  timezone:")
    assert "unknown key `<<`" in _refusal(text)


def test_every_error_is_reported_at_once_and_nothing_is_changed(
    conn: psycopg.Connection,
) -> None:
    good = district_doc(code="D0")
    bad = district_doc(code="D2")
    bad["regular_orders"][0]["number"] = "REG-D2"
    bad["enterprise_order"]["licenses"] = "5000"
    bad["schools"][2]["active"] = "no"
    bad["timezone"] = "Mars/Olympus"
    text = _yaml(good, bad)
    with pytest.raises(MasterDataError) as info:
        load_master_data(conn, parse_master_data(text))
    message = str(info.value)
    d2 = _line_of(text, "code: D2")
    for fragment in ("licenses: '5000'", "active: 'no'", "timezone: Mars/Olympus"):
        assert f"line {_line_of(text, fragment, after=d2)}: district D2" in message, fragment
    assert message.startswith("3 problems")
    assert _count(conn, "districts") == 0


# -- what would silently drop data ---------------------------------------------------------


def test_the_holding_bin_cannot_move_to_a_school_with_active_students(
    conn: psycopg.Connection,
) -> None:
    load(conn, district_doc())
    run(conn, [row("S1", school_code="102")])
    doc = district_doc()
    doc["holding_bin_school"] = "102"
    with pytest.raises(MasterDataError, match=r"district D1: holding_bin_school 102 has 1 active"):
        load(conn, doc)
    bin_code = conn.execute(
        "SELECT s.code FROM districts d JOIN schools s ON s.school_id = d.holding_bin_school_id"
    ).fetchone()[0]
    assert bin_code == "D1-HB"


def test_a_school_is_never_dropped_by_leaving_it_out(conn: psycopg.Connection) -> None:
    load(conn, district_doc())
    run(conn, [row("S1", school_code="102")])
    doc = district_doc()
    doc["schools"] = [s for s in doc["schools"] if s["code"] != "102"]
    doc["name"] = "Renamed"
    with pytest.raises(MasterDataError, match=r"school 102 \(Roosevelt Middle\) .* 1 student"):
        load(conn, doc)
    assert conn.execute("SELECT name FROM districts").fetchone()[0] == "District D1"


def test_an_order_listed_twice_is_refused() -> None:
    doc = district_doc()
    doc["regular_orders"].append({"number": "REG-D1", "school": "102", "licenses": 5})
    assert "order REG-D1 appears twice" in _refusal(_yaml(doc))


# -- existing_students: the upload's column rules ------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"last_name": "Al\u202evarez"}, "last_name: Last Name contains control"),
        ({"first_name": "Ma\nria"}, "first_name: First Name contains control"),
        ({"email": "not-an-email"}, "email: Email is not a valid email address"),
        ({"grade": "13"}, "grade: Grade must be K or 1 to 12"),
        ({"username": "a b"}, "username: Username must be 3 to 64"),
        ({"student_id": "E 1"}, "student_id: Student ID may only contain"),
        ({"last_name": "x" * 61}, "last_name: Last Name is longer than 60"),
        ({"first_name": None}, "first_name: First Name is required"),
        ({"school": "D1-HB"}, "school D1-HB is the Holding Bin School"),
        ({"school": "900"}, "school 900 is closed"),
        ({"grade": "9"}, "grade 9 does not participate"),
        ({"order": "NOPE"}, "unknown order NOPE"),
        ({"school": "999"}, "unknown school 999"),
    ],
)
def test_existing_students_go_through_the_upload_rules(
    conn: psycopg.Connection, data: dict, fragment: str
) -> None:
    sid = data.get("student_id", "E1")
    rest = {k: v for k, v in data.items() if k != "student_id"}
    doc = district_doc(existing=[existing_student("E0"), existing_student(sid, **rest)])
    doc["grades"] = ["K", 1, 2, 3, 4, 5]
    text = _yaml(doc)
    with pytest.raises(MasterDataError) as info:
        load_master_data(conn, parse_master_data(text))
    message = str(info.value)
    assert f"district D1 student {sid}: {fragment}" in message
    key = next(iter(data))
    at = "student_id:" if key == "student_id" else f"  {key}:"
    first_key = _line_of(text, "- student_id: E0")
    assert f"line {_line_of(text, at, after=first_key + 7)}:" in message
    assert _count(conn, "districts") == 0


def test_a_stored_students_entry_is_not_checked_again(conn: psycopg.Connection) -> None:
    # E1 was created in grade 5 at 101; the district then closes 101 and leaves grade 5:
    # the file still lists E1 as it was entered, and the uploads own it now
    doc = district_doc(existing=[existing_student("E1")])
    load(conn, doc)
    doc["schools"][1]["active"] = False
    doc["grades"] = ["9", "10"]
    load(conn, doc)
    assert conn.execute("SELECT active FROM schools WHERE code = '101'").fetchone()[0] is False


def test_a_closed_school_may_hold_a_deactivated_existing_student(conn) -> None:
    load(conn, district_doc(existing=[existing_student("E1", school="900", status="deactivated")]))
    assert _count(conn, "students") == 1


def test_existing_students_repeated_or_sharing_a_username_are_refused() -> None:
    doc = district_doc(
        existing=[
            existing_student("E1"),
            existing_student("E1", username="other"),
            existing_student("E2", username="USERE1"),
        ]
    )
    message = _refusal(_yaml(doc))
    assert "district D1 student E1: student_id E1 appears twice" in message
    assert "district D1 student E2: username USERE1 is also student E1's" in message


def test_a_username_held_in_the_database_is_refused_in_words(conn) -> None:
    load(conn, district_doc(code="D1", existing=[existing_student("E1")]))
    two = district_doc(code="D2", existing=[existing_student("X9", order="ENT-D2")])
    two["regular_orders"][0]["number"] = "REG-D2"
    two["existing_students"][0]["username"] = "UserE1"
    with pytest.raises(
        MasterDataError, match="username UserE1 is held by student E1 of district D1"
    ):
        load(conn, two)
    assert _count(conn, "districts") == 1


@pytest.mark.parametrize(
    ("licenses", "students", "expected"),
    [
        (1, ["E1", "E2"], "order ENT-D1: 1 licenses requested but 2 active students"),
        (100, ["E1"], "grade: Grade must be K or 1 to 12"),
    ],
)
def test_setup_load_never_shows_a_database_error(
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    licenses: int,
    students: list[str],
    expected: str,
) -> None:
    existing = [existing_student(s, grade="14" if licenses == 100 else "5") for s in students]
    setup = tmp_path / "setup.yaml"
    setup.write_text(_yaml(district_doc(licenses=licenses, existing=existing)))
    assert cli.main(["setup", "load", str(setup)]) == 1
    err = capsys.readouterr().err
    assert expected in err
    assert "CheckViolation" not in err and "DETAIL" not in err and "Traceback" not in err
    with psycopg.connect(db_url) as conn:
        assert _count(conn, "districts") == 0


def test_new_existing_students_count_against_stored_ones(conn: psycopg.Connection) -> None:
    load(conn, district_doc(licenses=2, existing=[existing_student("E1")]))
    run(conn, [row("S1")])  # the second license
    doc = district_doc(licenses=2, existing=[existing_student("E1"), existing_student("E2")])
    with pytest.raises(
        MasterDataError,
        match=r"order ENT-D1: 2 licenses requested but 3 active students would use it "
        r"\(2 stored, 1 new under existing_students\)",
    ):
        load(conn, doc)
    assert used(conn, "ENT-D1") == 2
