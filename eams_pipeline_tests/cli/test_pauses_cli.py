"""Pauses in the command line: `eams setup load` stores them, `eams process` goes through the
same guard as a Dagster run (a file processed in a pause is held, exit 3; `--dry-run` says
so too), `eams uploads show` gives the operator a hint, and approving applies it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import psycopg
import yaml

from eams_pipeline_tests.builders import csv_bytes, district_doc, row
from eams_pipeline_tests.cli_runner import eams


def _load(tmp_path: Path, url: str, pauses: list[dict]) -> None:
    setup = tmp_path / "setup.yaml"
    setup.write_text(yaml.safe_dump({"districts": [district_doc() | {"pauses": pauses}]}))
    loaded = eams("setup", "load", str(setup), cwd=tmp_path, url=url)
    assert loaded.returncode == 0, loaded.stderr


def test_a_file_processed_in_a_pause_is_held_exit_3_and_show_hints(
    db_url: str, tmp_path: Path
) -> None:
    # `eams process` receives the file now: a pause around today in every time zone
    today = dt.datetime.now(dt.UTC).date()
    around = {"from": today - dt.timedelta(days=2), "to": today + dt.timedelta(days=2)}
    _load(tmp_path, db_url, [around])
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT pauses FROM districts WHERE code = 'D1'").fetchone()[0] == [
            {"from": around["from"].isoformat(), "to": around["to"].isoformat()}
        ]
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1"), row("N2")]))
    message = f"uploads are paused from {around['from']} to {around['to']}"

    dry = eams("process", "--district", "D1", str(upload), "--dry-run", cwd=tmp_path, url=db_url)
    assert dry.returncode == 3, dry.stderr
    assert json.loads(dry.stdout)["guard"]["rule"] == "paused"

    done = eams("process", "--district", "D1", str(upload), cwd=tmp_path, url=db_url)
    assert done.returncode == 3, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "held" and summary["added"] == 2
    assert (summary["guard"]["rule"], summary["guard"]["message"]) == ("paused", message)
    with psycopg.connect(db_url) as conn:
        key, status = conn.execute("SELECT upload_key, status FROM uploads").fetchone()
        assert status == "held"
        assert conn.execute("SELECT count(*) FROM students").fetchone() == (0,)

    shown = eams("uploads", "show", key, cwd=tmp_path, url=db_url)
    assert shown.returncode == 0, shown.stderr
    assert f"    paused: {message}" in shown.stdout
    assert "      hint: it arrived on a day the district's master data pauses" in shown.stdout
    assert f"eams uploads approve {key} --file PATH_OF_THE_FILE --by YOUR_NAME" in shown.stdout
    listed = eams("uploads", "list", "--district", "D1", cwd=tmp_path, url=db_url)
    assert "held: paused" in listed.stdout

    approved = eams(
        "uploads", "approve", key, "--file", str(upload), "--by", "alice", "--no-email",
        cwd=tmp_path, url=db_url,
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM students").fetchone() == (2,)


def test_the_first_upload_after_a_long_pause_shows_its_hint(db_url: str, tmp_path: Path) -> None:
    today = dt.datetime.now(dt.UTC).date()
    # a pause of 30 days that ended three days ago, nothing applied since
    ended = today - dt.timedelta(days=3)
    _load(tmp_path, db_url, [{"from": ended - dt.timedelta(days=29), "to": ended}])
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1")]))
    done = eams("process", "--district", "D1", str(upload), cwd=tmp_path, url=db_url)
    assert done.returncode == 3, done.stderr
    guard = json.loads(done.stdout)["guard"]
    assert guard["rule"] == "first_after_pause"
    assert guard["message"] == (
        f"first upload after a pause of 30 days ({ended - dt.timedelta(days=29)} to {ended}); "
        "please review"
    )
    with psycopg.connect(db_url) as conn:
        key = conn.execute("SELECT upload_key FROM uploads").fetchone()[0]
    shown = eams("uploads", "show", key, cwd=tmp_path, url=db_url).stdout
    assert "hint: the first upload after a long pause" in shown
    assert "eams export students --district D1" in shown
