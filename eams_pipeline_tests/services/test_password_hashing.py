"""Passwords hashed before the apply transaction: durable batches, a crash in the
middle of hashing followed by a re-run, hashes changed in between, held files, progress."""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence

import pandas as pd
import psycopg
import pytest
from argon2 import PasswordHasher as Argon2

from eams_pipeline import config
from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.db import password_cache
from eams_pipeline.db.districts import get_district
from eams_pipeline.services.process import Engine, Upload, prepare_upload, process_upload
from eams_pipeline.services.progress import Progress
from eams_pipeline.services.review import approve
from eams_pipeline_tests import hash_crash_worker
from eams_pipeline_tests.builders import (
    assert_license_invariant,
    baseline,
    csv_bytes,
    district_doc,
    existing_student,
    load,
    row,
)


class CountingHasher(PasswordHasher):
    """The configured hasher, counting every password it hashes."""

    def __init__(self) -> None:
        super().__init__(config.argon2_settings())
        self.hashed: list[str] = []

    def hash_many(self, passwords: Sequence[str]) -> list[str]:
        self.hashed += list(passwords)
        return super().hash_many(passwords)


def _engine(hasher: PasswordHasher, batch: int = 5) -> Engine:
    return Engine(secret=config.secret_key(), hasher=hasher, hash_batch_size=batch)


def _rows(n: int, prefix: str = "N", password: str = "pw-{}-secret") -> list[dict[str, str]]:
    return [row(f"{prefix}{i:03d}", password=password.format(i)) for i in range(n)]


def _cache(conn: psycopg.Connection) -> dict[str, str]:
    rows = conn.execute("SELECT student_id, password_hash FROM password_hash_cache").fetchall()
    conn.commit()
    return dict(rows)


def _drop_cached(conn: psycopg.Connection, student_id: str) -> None:
    """A cached hash gone between the phases (aged out, or another run's apply used it)."""
    conn.execute("DELETE FROM password_hash_cache WHERE student_id = %s", (student_id,))
    conn.commit()


def _assert_stored_and_cache_used(conn: psycopg.Connection, rows: list[dict[str, str]]) -> None:
    """Every row's password is stored as its argon2id hash; the apply removed the cache
    rows it used."""
    stored = _stored(conn)
    assert all(Argon2().verify(stored[r["student_id"]], r["password"]) for r in rows)
    assert _cache(conn) == {}


def _stored(conn: psycopg.Connection) -> dict[str, str]:
    rows = conn.execute("SELECT student_id, password_hash FROM students").fetchall()
    conn.commit()
    return dict(rows)


@pytest.fixture
def idle(conn: psycopg.Connection) -> psycopg.Connection:
    """The test's connection with a district loaded and no transaction open (what the CLI
    and the Dagster job give process_upload)."""
    load(conn, district_doc(licenses=100))
    conn.commit()
    return conn


def _limit_memory() -> None:
    cap = 3 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_a_crash_mid_hashing_then_a_rerun_reuses_the_finished_hashes_and_applies_once(
    idle: psycopg.Connection, db_url: str, tmp_path
) -> None:
    total, batch, finished_batches = 40, 5, 3
    rows = _rows(total)
    upload_file = tmp_path / "students.csv"
    upload_file.write_bytes(csv_bytes(rows))
    key = "D1-20260114T020000000000Z"

    # a real process, killed with SIGKILL in the middle of its 4th batch
    env = {
        **os.environ,
        hash_crash_worker.ENV: json.dumps(
            {
                "db_url": db_url,
                "file": str(upload_file),
                "district": "D1",
                "key": key,
                "batch_size": batch,
                "kill_after_batches": finished_batches,
            }
        ),
    }
    child = subprocess.run(
        [sys.executable, "-m", "eams_pipeline_tests.hash_crash_worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_memory,
    )
    assert child.returncode == -9, child.stdout + child.stderr

    # the finished batches are durable; nothing else happened
    before = _cache(idle)
    assert len(before) == finished_batches * batch
    assert _stored(idle) == {}
    assert idle.execute("SELECT count(*) FROM uploads").fetchone()[0] == 0
    idle.commit()

    # the re-run (same upload key: the Dagster retry) hashes only the rest
    hasher = CountingHasher()
    result = process_upload(
        idle, Upload("D1", upload_file.read_bytes(), key=key), _engine(hasher, batch)
    )
    assert result.status == UploadStatus.PROCESSED
    assert result.counts["added"] == total
    assert len(hasher.hashed) == total - finished_batches * batch
    assert result.hashed_passwords == total - finished_batches * batch
    assert result.cached_hashes == total  # the apply took every hash from the cache
    done_before = {r["student_id"]: r["password"] for r in rows if r["student_id"] in before}
    assert not set(hasher.hashed) & set(done_before.values())

    stored = _stored(idle)
    assert len(stored) == total
    for sid, h in before.items():
        assert stored[sid] == h  # the hash computed before the crash is the one applied
    _assert_stored_and_cache_used(idle, rows)

    # applied exactly once: one upload, one history row per student, licenses consistent
    again = process_upload(idle, Upload("D1", upload_file.read_bytes(), key=key), _engine(hasher))
    assert again.already_applied
    assert len(hasher.hashed) == total - finished_batches * batch
    counts = idle.execute(
        "SELECT (SELECT count(*) FROM uploads), (SELECT count(*) FROM student_history), "
        "(SELECT status FROM uploads)"
    ).fetchone()
    assert counts == (1, total, "processed")
    assert_license_invariant(idle)
    idle.commit()


def test_a_hash_missing_from_the_cache_is_hashed_inside_the_apply(
    idle: psycopg.Connection,
) -> None:
    rows = _rows(6)
    upload = Upload("D1", csv_bytes(rows), key="D1-k0")
    assert prepare_upload(idle, upload, _engine(_plain_hasher())).hashed == 6
    # the run stopped after phase 1; its re-run finds every hash in the cache
    prepared = prepare_upload(idle, upload, _engine(_plain_hasher()))
    assert prepared.hashed == 0
    # one cached hash went away in between (aged out, or another run's apply used it)
    _drop_cached(idle, rows[4]["student_id"])
    hasher = CountingHasher()
    result = process_upload(idle, upload, _engine(hasher), prepared=prepared)
    assert result.status == UploadStatus.PROCESSED
    assert hasher.hashed == [rows[4]["password"]]
    assert (result.cached_hashes, result.hashed_passwords) == (5, 1)
    _assert_stored_and_cache_used(idle, rows)


def test_the_apply_uses_the_hashes_its_own_phase_1_computed(idle: psycopg.Connection) -> None:
    """In one run the apply takes phase 1's hashes from memory: even a cache row gone in
    between costs nothing, and nothing is hashed twice."""
    rows = _rows(6)
    upload = Upload("D1", csv_bytes(rows), key="D1-k9")
    prepared = prepare_upload(idle, upload, _engine(_plain_hasher()))
    assert prepared.hashed == 6
    _drop_cached(idle, rows[4]["student_id"])
    hasher = CountingHasher()
    result = process_upload(idle, upload, _engine(hasher), prepared=prepared)
    assert hasher.hashed == []
    assert (result.cached_hashes, result.hashed_passwords) == (6, 6)
    _assert_stored_and_cache_used(idle, rows)


def test_a_password_changed_after_hashing_is_hashed_inline(idle: psycopg.Connection) -> None:
    first = _rows(6)
    prepared = prepare_upload(
        idle, Upload("D1", csv_bytes(first), key="D1-k1"), _engine(_plain_hasher())
    )
    assert prepared.hashed == 6
    second = [dict(r) for r in first]
    second[2]["password"] = "changed-in-between"
    hasher = CountingHasher()
    # the apply of other bytes than phase 1 read (the file is read again): the changed
    # password's fingerprint is not in the cache, it is hashed inside the apply
    result = process_upload(
        idle, Upload("D1", csv_bytes(second), key="D1-k1"), _engine(hasher), prepared=prepared
    )
    assert result.status == UploadStatus.PROCESSED
    assert hasher.hashed == ["changed-in-between"]
    assert result.cached_hashes == 5
    stored = _stored(idle)
    assert Argon2().verify(stored[second[2]["student_id"]], "changed-in-between")
    # the stale cached hash of the old password was not used and is not kept by the apply's
    # cleanup; it ages out (EAMS_HASH_CACHE_DAYS)
    assert set(_cache(idle)) == {second[2]["student_id"]}


def _plain_hasher() -> PasswordHasher:
    return PasswordHasher(config.argon2_settings())


def test_a_cached_hash_serves_only_its_student_and_password(idle: psycopg.Connection) -> None:
    # the same password for two students: two fingerprints (Student ID is in the key), two
    # hashes; an unchanged password is not hashed again; the cache holds no clear text
    rows = [row("A1", password="same-password"), row("A2", password="same-password")]
    prepare_upload(idle, Upload("D1", csv_bytes(rows), key="D1-k2"), _engine(_plain_hasher()))
    cached = idle.execute(
        "SELECT student_id, password_fingerprint, password_hash FROM password_hash_cache"
    ).fetchall()
    idle.commit()
    assert len(cached) == 2 and cached[0][1] != cached[1][1]
    assert "same-password" not in str(cached)
    hasher = CountingHasher()
    result = process_upload(idle, Upload("D1", csv_bytes(rows), key="D1-k2"), _engine(hasher))
    assert result.counts["added"] == 2 and hasher.hashed == []
    again = process_upload(idle, Upload("D1", csv_bytes(rows), key="D1-k3"), _engine(hasher))
    assert again.counts["unchanged"] == 2 and again.hashed_passwords == 0
    assert _cache(idle) == {}


def test_rows_with_errors_are_not_hashed_ahead(idle: psycopg.Connection) -> None:
    rows = [
        row("OK1"),
        row("BAD1", grade="99"),  # a column rule broken
        row("DUP", password="one-password"),
        row("DUP", password="two-password", username="other"),  # duplicate Student ID
    ]
    hasher = CountingHasher()
    result = process_upload(idle, Upload("D1", csv_bytes(rows)), _engine(hasher))
    assert result.counts["added"] == 1
    assert hasher.hashed == ["secret-pw"]


def test_a_held_upload_keeps_its_hashes_for_the_approval(conn: psycopg.Connection) -> None:
    existing = [existing_student(f"E{i}") for i in range(8)]
    # the default percentages, a floor of 1 (8 students) and a baseline upload
    load(conn, district_doc(existing=existing, guard={"min_count": 1}))
    baseline(conn, [f"E{i}" for i in range(8)])
    conn.commit()
    rows = [row(f"E{i}", password=f"new-password-{i}") for i in range(8)]
    data = csv_bytes(rows)
    hasher = CountingHasher()
    held = process_upload(conn, Upload("D1", data, key="D1-held"), _engine(hasher))
    assert held.status == UploadStatus.HELD
    assert len(hasher.hashed) == 8 and held.hashed_passwords == 0  # none applied
    assert len(_cache(conn)) == 8
    approved = approve(conn, "D1-held", data, _engine(hasher), decided_by="test")
    assert approved.status == UploadStatus.PROCESSED
    assert len(hasher.hashed) == 8  # the approval hashed nothing again
    assert approved.cached_hashes == 8
    stored = _stored(conn)
    assert all(Argon2().verify(stored[f"E{i}"], f"new-password-{i}") for i in range(8))
    assert _cache(conn) == {}


class Recorder(Progress):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def started(self, step: str) -> None:
        self.events.append(("started", step))

    def advanced(self, step: str, done: int, total: int) -> None:
        self.events.append(("advanced", step, done, total))

    def finished(self, step: str, seconds: float) -> None:
        assert seconds >= 0
        self.events.append(("finished", step))


def test_progress_reports_every_step_and_each_hashing_batch(idle: psycopg.Connection) -> None:
    recorder = Recorder()
    result = process_upload(
        idle, Upload("D1", csv_bytes(_rows(12))), _engine(_plain_hasher(), 5), progress=recorder
    )
    assert result.status == UploadStatus.PROCESSED
    advanced = [e[2:] for e in recorder.events if e[0] == "advanced"]
    assert advanced == [(0, 12), (5, 12), (10, 12), (12, 12)]
    finished = [e[1] for e in recorder.events if e[0] == "finished"]
    for step in ("read", "validate", "hash", "lock", "snapshot", "plan", "apply", "record"):
        assert step in finished
    assert set(result.timings) >= set(finished)
    # each step's CPU seconds (its thread's) are part of its seconds, the rest is waiting
    assert set(result.cpu_timings) == set(result.timings)
    assert all(0 <= result.cpu_timings[s] <= result.timings[s] + 0.01 for s in result.timings)
    assert result.hash_rate_per_s > 0


def _eams(*args: str, url: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", *args],
        cwd=cwd,
        env={**os.environ, "EAMS_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_eams_uploads_approve_reuses_the_hashes_of_the_held_night(
    conn: psycopg.Connection, db_url: str, tmp_path
) -> None:
    existing = [existing_student(f"E{i}") for i in range(8)]
    load(conn, district_doc(existing=existing, guard={"min_count": 1}))
    baseline(conn, [f"E{i}" for i in range(8)])
    conn.commit()
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row(f"E{i}", password=f"new-password-{i}") for i in range(8)]))
    held = _eams("process", "--district", "D1", "--verbose", str(upload), url=db_url, cwd=tmp_path)
    assert held.returncode == 3, held.stderr
    assert any(line.startswith("eams: hash: 8/8 (100%)") for line in held.stderr.splitlines())
    [(key,)] = conn.execute("SELECT upload_key FROM uploads WHERE status = 'held'").fetchall()
    conn.commit()
    approved = _eams(
        "uploads", "approve", key, "--file", str(upload), "--by", "test", "--no-email",
        "--verbose", url=db_url, cwd=tmp_path,
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    assert "eams: hash: " not in approved.stderr  # nothing left to hash
    assert "eams: apply done in " in approved.stderr
    stored = _stored(conn)
    assert all(Argon2().verify(stored[f"E{i}"], f"new-password-{i}") for i in range(8))
    assert _cache(conn) == {}


def test_the_district_is_not_locked_while_passwords_are_hashed(
    idle: psycopg.Connection, db_url: str
) -> None:
    seen: list[bool] = []

    class Probing(PasswordHasher):
        """Before each batch: can another session lock the district right now?"""

        def __init__(self) -> None:
            super().__init__(config.argon2_settings())

        def hash_many(self, passwords: Sequence[str]) -> list[str]:
            with psycopg.connect(db_url) as other:
                other.execute("SET lock_timeout = '2s'")
                try:
                    other.execute("SELECT 1 FROM districts WHERE code = 'D1' FOR UPDATE")
                    seen.append(True)
                except psycopg.errors.LockNotAvailable:
                    seen.append(False)
            return super().hash_many(passwords)

    result = process_upload(idle, Upload("D1", csv_bytes(_rows(12))), _engine(Probing(), 5))
    assert result.status == UploadStatus.PROCESSED
    assert seen == [True, True, True]  # three batches, none under the district's lock


def _version(conn: psycopg.Connection) -> int:
    from eams_pipeline.db.district_snapshot import students_version

    (district_id,) = conn.execute("SELECT district_id FROM districts").fetchone()
    version = students_version(conn, district_id)
    conn.commit()
    return version


def test_every_write_to_a_districts_students_changes_its_version(idle: psycopg.Connection) -> None:
    seen = [_version(idle)]
    upload = Upload("D1", csv_bytes(_rows(3)), key="D1-v1")
    process_upload(idle, upload, _engine(_plain_hasher()))
    seen.append(_version(idle))
    for statement in (
        "UPDATE students SET class_name = 'Room 9'",
        "UPDATE students SET class_name = 'Room 9' WHERE false",  # writes nothing
        "DELETE FROM student_history",
        "DELETE FROM students WHERE student_id = 'N000'",
        "TRUNCATE students CASCADE",
    ):
        idle.execute(statement)
        idle.commit()
        seen.append(_version(idle))
    # every statement that wrote a student moved it; the history and an empty UPDATE did not
    assert [b > a for a, b in itertools.pairwise(seen)] == [
        True,
        True,
        False,
        False,
        True,
        True,
    ]


def test_students_changed_between_the_phases_are_read_again_under_the_lock(
    idle: psycopg.Connection,
) -> None:
    """Phase 1 reads the students without the lock; the apply reuses them only when their
    version is unchanged. A write in between (here: an operator deactivating a student)
    must be planned against, or the A row below would be `unchanged` and the student
    would stay deactivated with its license in the bin."""
    rows = _rows(3)
    process_upload(idle, Upload("D1", csv_bytes(rows), key="D1-s1"), _engine(_plain_hasher()))
    again = Upload("D1", csv_bytes(rows), key="D1-s2")
    prepared = prepare_upload(idle, again, _engine(_plain_hasher()))
    assert prepared.students is not None and len(prepared.students) == 3
    idle.execute("UPDATE students SET status = 'deactivated' WHERE student_id = 'N001'")
    idle.execute("UPDATE orders SET used = used - 1 WHERE number = 'ENT-D1'")
    idle.commit()
    result = process_upload(idle, again, _engine(_plain_hasher()), prepared=prepared)
    assert (result.counts["activated"], result.counts["unchanged"]) == (1, 2)
    assert_license_invariant(idle)
    idle.commit()
    # and with nothing written in between, the students read before the lock are used
    third = Upload("D1", csv_bytes(rows), key="D1-s3")
    prepared = prepare_upload(idle, third, _engine(_plain_hasher()))
    result = process_upload(idle, third, _engine(_plain_hasher()), prepared=prepared)
    assert result.counts["unchanged"] == 3 and "load" not in result.timings


@pytest.mark.parametrize("probe_max_keys", [0, 200_000])
def test_the_cache_is_asked_the_same_by_probes_or_by_a_join(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, probe_max_keys: int
) -> None:
    # up to PROBE_MAX_KEYS keys are asked one index probe each, more by the planner's
    # join: the same keys come back as not cached either way
    load(conn, district_doc(), district_doc(code="D2", existing=[]))
    d1, d2 = (get_district(conn, code).district_id for code in ("D1", "D2"))
    stored = pd.DataFrame(
        {
            "student_id": ["S1", "S2", "S3"],
            "password_fp": [11, 22, 33],
            "password_hash": "$argon2id$x",
        }
    )
    password_cache.store(conn, d1, stored)
    password_cache.store(conn, d2, stored.assign(student_id=["S4", "S4", "S4"]))
    monkeypatch.setattr(password_cache, "PROBE_MAX_KEYS", probe_max_keys)
    keys = pd.DataFrame(
        {
            "k": [0, 1, 2, 3, 4],
            "student_id": ["S1", "S2", "S2", "S4", "S9"],
            "password_fp": [11, 22, 99, 11, 11],  # cached, cached, other password, D2's, none
        }
    )
    assert password_cache.to_hash(conn, d1, keys).tolist() == [2, 3, 4]
