"""Rotating the server secret that keys the password fingerprints (EAMS_SECRET_KEY): with
the old one in EAMS_SECRET_KEY_PREVIOUS a replay is all unchanged, hashes nothing and
writes no history, and the stored fingerprints move to the new key; the keys' format is
checked at start-up. Real PostgreSQL, the real engine and argon2id (cheap settings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
import yaml
from argon2 import PasswordHasher as Argon2

from eams_pipeline import config
from eams_pipeline.core.fingerprints import (
    fingerprint_key,
    password_fingerprint,
    recognised_by_previous,
)
from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.services.process import Engine, Upload, prepare_upload, process_upload
from eams_pipeline.services.review import approve
from eams_pipeline_tests.builders import csv_bytes, district_doc, load, row

OLD, NEW = "0a1d" * 16, "2e3f" * 16  # two secrets in the documented format
N = 12


class CountingHasher(PasswordHasher):
    """The configured hasher, counting every password it hashes."""

    def __init__(self) -> None:
        super().__init__(config.argon2_settings())
        self.hashed: list[str] = []

    def hash_many(self, passwords: Sequence[str]) -> list[str]:
        self.hashed += list(passwords)
        return super().hash_many(passwords)


def _engine(secret: str, previous: str | None = None) -> Engine:
    return Engine(
        secret=secret.encode(),
        previous_secrets=(previous.encode(),) if previous else (),
        hasher=CountingHasher(),
    )


def _rows(n: int = N) -> list[dict[str, str]]:
    return [row(f"S{i:02d}", password=f"pw-{i:02d}-secret") for i in range(n)]


def _process(
    conn: psycopg.Connection, rows: list[dict[str, str]], engine: Engine, key: str, **kw
) -> object:
    return process_upload(conn, Upload("D1", csv_bytes(rows), key=key), engine, **kw)


def _students(conn: psycopg.Connection) -> pd.DataFrame:
    frame = pd.DataFrame(
        conn.execute(
            """SELECT student_id, password_hash, password_fingerprint, updated_at
               FROM students ORDER BY student_id"""
        ).fetchall(),
        columns=["student_id", "password_hash", "password_fingerprint", "updated_at"],
    ).set_index("student_id")
    conn.commit()
    return frame


def _fingerprints(rows: list[dict[str, str]], secret: str) -> dict[str, int]:
    ids = pd.Series([r["student_id"] for r in rows])
    fps = password_fingerprint(
        ids, pd.Series([r["password"] for r in rows]), fingerprint_key(secret.encode())
    )
    return dict(zip(ids, (int(v) for v in fps), strict=True))


def _history(conn: psycopg.Connection, key: str) -> list[tuple]:
    lines = conn.execute(
        """SELECT s.student_id, h.change, h.data_changed, h.password_changed
           FROM student_history h JOIN uploads u USING (upload_id)
           JOIN students s USING (student_pk)
           WHERE u.upload_key = %s ORDER BY s.student_id""",
        (key,),
    ).fetchall()
    conn.commit()
    return lines


def _key(n: int) -> str:
    return f"D1-2026011{n}T020000000000Z"


@pytest.fixture
def idle(conn: psycopg.Connection) -> psycopg.Connection:
    """District D1 with the change guard's default limits and no floor (its 12 students are
    far fewer than the default `min_count`), no transaction open."""
    load(conn, district_doc(licenses=100, guard={"min_count": 0}))
    conn.commit()
    return conn


def test_a_replay_after_a_rotation_with_the_previous_key_is_unchanged_and_moves_the_keys(
    idle: psycopg.Connection,
) -> None:
    rows = _rows()
    first = _process(idle, rows, _engine(OLD), _key(1))
    assert first.counts["added"] == N
    before = _students(idle)
    assert before["password_fingerprint"].to_dict() == _fingerprints(rows, OLD)

    engine = _engine(NEW, previous=OLD)
    replay = _process(idle, rows, engine, _key(2))
    assert replay.status == UploadStatus.PROCESSED  # not held by the change guard
    assert replay.counts["unchanged"] == N and replay.counts["updated"] == 0
    assert replay.hashed_passwords == 0 and engine.hasher.hashed == []
    assert _history(idle, _key(2)) == []
    assert replay.rekeyed_passwords == N
    after = _students(idle)
    # the same hashes, now found by the new key's fingerprints; not an update of the student
    assert after["password_hash"].equals(before["password_hash"])
    assert after["updated_at"].equals(before["updated_at"])
    assert after["password_fingerprint"].to_dict() == _fingerprints(rows, NEW)

    # moved: the next replay needs no previous key (and moves nothing)
    alone = _engine(NEW)
    again = _process(idle, rows, alone, _key(3))
    assert again.counts["unchanged"] == N and again.rekeyed_passwords == 0
    assert again.hashed_passwords == 0 and alone.hasher.hashed == []
    assert _history(idle, _key(3)) == []


def test_a_replay_after_a_rotation_without_the_previous_key_is_what_it_was(
    idle: psycopg.Connection,
) -> None:
    rows = _rows()
    _process(idle, rows, _engine(OLD), _key(1))
    engine = _engine(NEW)
    held = _process(idle, rows, engine, _key(2))
    # every password looks new: all updated, so the change guard holds the file
    assert held.status == UploadStatus.HELD and held.counts["updated"] == N
    assert held.guard_trip is not None and "max_updated_pct" in json.dumps(held.guard_trip)
    assert len(engine.hasher.hashed) == N  # hashed ahead of the guard (phase 1)

    load(idle, district_doc(licenses=100, guard="off"))
    idle.commit()
    applied = _process(idle, rows, _engine(NEW), _key(3))
    assert applied.counts["updated"] == N and applied.rekeyed_passwords == 0
    assert _history(idle, _key(3)) == [(r["student_id"], "updated", False, True) for r in rows]
    assert _students(idle)["password_fingerprint"].to_dict() == _fingerprints(rows, NEW)


def test_without_phase_one_the_plan_recognises_the_previous_key(
    idle: psycopg.Connection,
) -> None:
    """A dry run (nothing written) and a caller holding a transaction (no hashing ahead)
    decide the same: the plan itself recognises the previous key."""
    rows = _rows()
    _process(idle, rows, _engine(OLD), _key(1))
    engine = _engine(NEW, previous=OLD)
    dry = process_upload(idle, Upload("D1", csv_bytes(rows)), engine, dry_run=True)
    assert dry.counts["unchanged"] == N and engine.hasher.hashed == []
    assert _students(idle)["password_fingerprint"].to_dict() == _fingerprints(rows, OLD)

    idle.execute("SELECT 1")  # a transaction open: process_upload hashes inline, no phase 1
    inline = _process(idle, rows, engine, _key(2))
    idle.commit()
    assert inline.counts["unchanged"] == N and inline.rekeyed_passwords == N
    assert engine.hasher.hashed == []
    assert _students(idle)["password_fingerprint"].to_dict() == _fingerprints(rows, NEW)


def test_a_nightly_file_after_a_rotation_changes_only_what_changed(
    idle: psycopg.Connection,
) -> None:
    rows = _rows()
    _process(idle, rows, _engine(OLD), _key(1))
    night = [dict(r) for r in rows]
    night[0]["password"] = "a-new-password"  # updated: hashed, "Password: changed"
    night[1]["last_name"] = "Renamed"  # updated: data only, its password recognised
    night[2]["grade"] = "13"  # INVALID_GRADE: the row changes nothing
    night.append(row("S99", password="newcomer-pw"))  # added
    engine = _engine(NEW, previous=OLD)
    result = _process(idle, night, engine, _key(2))
    assert result.counts == {
        "rows": N + 1,
        "added": 1,
        "activated": 0,
        "deactivated": 0,
        "updated": 2,
        "unchanged": N - 3,
        "errors": 1,
    }
    assert sorted(engine.hasher.hashed) == ["a-new-password", "newcomer-pw"]
    assert _history(idle, _key(2)) == [
        ("S00", "updated", False, True),
        ("S01", "updated", True, False),
        ("S99", "added", True, True),
    ]
    stored = _students(idle)
    assert result.rekeyed_passwords == N - 2  # all but the new password and the error
    assert stored["password_fingerprint"].to_dict() == {
        **_fingerprints(night, NEW),
        "S02": _fingerprints(rows, OLD)["S02"],  # its row failed: left as it was
    }
    assert Argon2().verify(stored.loc["S00", "password_hash"], "a-new-password")
    # the data change's before-image already holds the new key's fingerprint (a revert
    # puts back a fingerprint the current key recognises)
    (before_fp,) = idle.execute(
        """SELECT h.password_fingerprint_before FROM student_history h
           JOIN students s USING (student_pk) JOIN uploads u USING (upload_id)
           WHERE s.student_id = 'S01' AND u.upload_key = %s""",
        (_key(2),),
    ).fetchone()
    idle.commit()
    assert before_fp == _fingerprints(rows, NEW)["S01"]


def test_hashes_cached_before_a_rotation_serve_the_approval_after_it(
    idle: psycopg.Connection,
) -> None:
    """A file held the night before the rotation had its passwords hashed into the cache
    under the old key's fingerprints: its approval after the rotation hashes none again."""
    rows = _rows()
    _process(idle, rows, _engine(OLD), _key(1))
    changed = [dict(r, password=f"changed-{i:02d}-pw") for i, r in enumerate(rows)]
    night = _engine(OLD)
    held = _process(idle, changed, night, _key(2))
    assert held.status == UploadStatus.HELD and len(night.hasher.hashed) == N

    engine = _engine(NEW, previous=OLD)
    result = approve(idle, _key(2), csv_bytes(changed), engine, decided_by="operator")
    assert result.counts["updated"] == N
    assert result.hashed_passwords == 0 and engine.hasher.hashed == []
    assert result.cached_hashes == N
    stored = _students(idle)
    assert stored["password_fingerprint"].to_dict() == _fingerprints(changed, NEW)
    assert all(
        Argon2().verify(stored.loc[r["student_id"], "password_hash"], r["password"])
        for r in changed
    )
    (left,) = idle.execute("SELECT count(*) FROM password_hash_cache").fetchone()
    idle.commit()
    assert left == 0  # the apply used (and removed) every one


def test_phase_one_hashes_only_the_new_passwords_after_a_rotation(
    idle: psycopg.Connection,
) -> None:
    rows = _rows()
    _process(idle, rows, _engine(OLD), _key(1))
    night = [dict(r) for r in rows]
    night[3]["password"] = "another-pw-3"
    engine = _engine(NEW, previous=OLD)
    prepared = prepare_upload(idle, Upload("D1", csv_bytes(night), key=_key(2)), engine)
    assert engine.hasher.hashed == ["another-pw-3"] and prepared.hashed == 1
    assert prepared.recognised is not None and int(prepared.recognised.sum()) == N - 1


def test_recognised_by_previous_keys_only_the_rows_that_differ() -> None:
    ids = pd.Series(["A", "B", "C", "D", "E"])
    passwords = pd.Series(["pa-pw", "pb-pw", "pc-pw", None, "pe-pw"])
    old, new = fingerprint_key(OLD.encode()), fingerprint_key(NEW.encode())
    current = password_fingerprint(ids, passwords, new)
    stored = password_fingerprint(ids, passwords, old)
    stored[1] = current[1]  # B: stored with the new key already
    stored[2] = 12345  # C: another password
    has = np.array([True, True, True, True, False])  # E: no stored student
    got = recognised_by_previous(ids, passwords, current, stored, has, [old])
    assert got.tolist() == [True, False, False, False, False]
    assert not recognised_by_previous(ids, passwords, current, stored, has, []).any()
    # a second previous key is tried on what the first did not recognise
    other = fingerprint_key(b"f" * 32)
    stored[2] = password_fingerprint(ids.iloc[[2]], passwords.iloc[[2]], other)[0]
    got = recognised_by_previous(ids, passwords, current, stored, has, [old, other])
    assert got.tolist() == [True, False, True, False, False]


# --- the keys' format, at start-up ------------------------------------------------------


def test_a_key_is_trimmed_like_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EAMS_SECRET_KEY", f"  {NEW}\n")
    from_env = config.secret_key()
    monkeypatch.delenv("EAMS_SECRET_KEY")
    key_file = tmp_path / "key"
    key_file.write_text(NEW + "\n")
    monkeypatch.setenv("EAMS_SECRET_KEY_FILE", str(key_file))
    assert from_env == config.secret_key() == NEW.encode()

    assert config.previous_secret_key() is None
    monkeypatch.setenv("EAMS_SECRET_KEY_PREVIOUS", "\t" + OLD + "\r\n")
    assert config.previous_secret_key() == OLD.encode()
    monkeypatch.delenv("EAMS_SECRET_KEY_PREVIOUS")
    previous_file = tmp_path / "previous-key"
    previous_file.write_text("an-old-key-of-another-format\n")
    monkeypatch.setenv("EAMS_SECRET_KEY_PREVIOUS_FILE", str(previous_file))
    assert config.previous_secret_key() == b"an-old-key-of-another-format"
    monkeypatch.setenv("EAMS_SECRET_KEY_PREVIOUS_FILE", "")
    monkeypatch.setenv("EAMS_SECRET_KEY_PREVIOUS", "   ")  # blank: no previous key
    assert config.previous_secret_key() is None
    # the Dagster resource hands the previous key to the runs' engine
    from eams_pipeline.orchestration.resources import EngineResource

    monkeypatch.setenv("EAMS_SECRET_KEY_PREVIOUS", OLD)
    engine = EngineResource().get()
    assert engine.secret == NEW.encode()
    assert engine.previous_keys == (fingerprint_key(OLD.encode()),)
    # the current key given as previous too is no previous key
    same = Engine(secret=NEW.encode(), hasher=CountingHasher(), previous_secrets=(NEW.encode(),))
    assert same.previous_keys == ()


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("EAMS_SECRET_KEY", "change-me-please-change-me-please-1", "not all of them hexadecimal"),
        ("EAMS_SECRET_KEY", "abcdef0123456789", "only 16 hexadecimal digits"),
        ("EAMS_SECRET_KEY", "ab" * 16 + " " + "cd" * 16, "a space, a line break"),
        ("EAMS_SECRET_KEY", "ab" * 16 + "\n" + "cd" * 16, "a space, a line break"),
        ("EAMS_SECRET_KEY_PREVIOUS", "0ld-k3y xyzzy-plugh", "a space, a line break"),
    ],
)
def test_a_malformed_key_is_a_clear_error_that_never_shows_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(config.ConfigError) as raised:
        config.check_secret_keys()
    message = str(raised.value)
    assert message.startswith(f"{name} is malformed") and says in message
    assert not any(part in message for part in value.split() if len(part) >= 4)

    # the Dagster code location fails to load (not its first run)
    from eams_pipeline.orchestration.resources import default_resources

    with pytest.raises(config.ConfigError, match=f"^{name} is malformed"):
        default_resources()


def test_a_malformed_key_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("placeholder\n")
    monkeypatch.delenv("EAMS_SECRET_KEY")
    monkeypatch.setenv("EAMS_SECRET_KEY_FILE", str(key_file))
    with pytest.raises(config.ConfigError) as raised:
        config.secret_key()
    message = str(raised.value)
    assert message.startswith("EAMS_SECRET_KEY is malformed (read from EAMS_SECRET_KEY_FILE)")
    assert "placeholder" not in message and "11 characters" in message


def _eams(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_command_line_rotation(db_url: str, tmp_path: Path) -> None:
    """`eams process` as an operator runs it: a malformed key stops it before anything is
    read or recorded; the rotated key (with a trailing newline, as a Kubernetes secret
    holds it) and the old one in EAMS_SECRET_KEY_PREVIOUS_FILE replay a file unchanged."""
    setup = tmp_path / "setup.yaml"
    setup.write_text(yaml.safe_dump({"districts": [district_doc(licenses=50, guard=None)]}))
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes(_rows()))
    env = {**os.environ, "EAMS_DATABASE_URL": db_url, "EAMS_SECRET_KEY": OLD}
    assert _eams("setup", "load", str(setup), env=env, cwd=tmp_path).returncode == 0
    first = _eams("process", "--district", "D1", str(upload), env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["added"] == N

    bad = "not-a-key-" + NEW[:20]
    refused = _eams(
        "process",
        "--district",
        "D1",
        str(upload),
        env={**env, "EAMS_SECRET_KEY": bad},
        cwd=tmp_path,
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert "EAMS_SECRET_KEY is malformed" in refused.stderr
    assert bad not in refused.stderr and NEW[:20] not in refused.stderr

    previous = tmp_path / "previous-key"
    previous.write_text(OLD + "\n")
    rotated = {**env, "EAMS_SECRET_KEY": NEW + "\n", "EAMS_SECRET_KEY_PREVIOUS_FILE": str(previous)}
    replay = _eams("process", "--district", "D1", str(upload), env=rotated, cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    summary = json.loads(replay.stdout)
    assert (summary["status"], summary["unchanged"], summary["updated"]) == ("processed", N, 0)
    with psycopg.connect(db_url) as conn:
        uploads = conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
        history = conn.execute("SELECT count(*) FROM student_history").fetchone()[0]
        stored = dict(conn.execute("SELECT student_id, password_fingerprint FROM students"))
    assert uploads == 2  # the refused run recorded nothing
    assert history == N  # the first upload's "added" lines only
    assert stored == _fingerprints(_rows(), NEW)
