"""The error file's shape and formula safety; argon2id hashing and unchanged passwords."""

from __future__ import annotations

import csv
import io
import threading

from argon2 import PasswordHasher as Argon2

from eams_pipeline import config
from eams_pipeline.core.error_file import render_error_file
from eams_pipeline.core.errors import error_frame
from eams_pipeline.core.passwords import Argon2Settings, PasswordHasher
from eams_pipeline_tests.builders import district_doc, existing_student, load, row, run


def test_error_file_header_order_and_formula_cells() -> None:
    errors = error_frame(
        [0, 1, 2, 3, 4],
        [2, 3, 5, 6, 7],
        ["=HYPERLINK(x)", "+1", "-123", "@SUM(A1)", "\tTAB"],
        ["Student ID"] * 5,
        ["INVALID_STUDENT_ID"] * 5,
        ["m1", "m2", "=2+2", "m4", "\rcr"],
    )
    text = render_error_file(errors).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Line Number", "Student ID", "Column", "Error Code", "Message"]
    assert [r[0] for r in rows[1:]] == ["2", "3", "5", "6", "7"]
    for r in rows[1:]:
        for cell in r:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert rows[1][1] == "'=HYPERLINK(x)"
    assert rows[3][1] == "'-123"


def test_passwords_are_argon2id_and_never_in_clear(conn) -> None:
    load(conn, district_doc())
    result = run(conn, [row("N1", password="Sup3r-secret")])
    assert result.hashed_passwords == 1
    stored = conn.execute("SELECT password_hash FROM students WHERE student_id='N1'").fetchone()[0]
    assert stored.startswith("$argon2id$")
    assert Argon2().verify(stored, "Sup3r-secret")
    dump = str(conn.execute("SELECT * FROM students").fetchall())
    assert "Sup3r-secret" not in dump


def test_an_unchanged_password_is_not_hashed_again(conn) -> None:
    load(conn, district_doc(existing=[existing_student("E1")]))
    first = run(conn, [row("N1"), row("E1", password="new-password")])
    assert first.hashed_passwords == 2
    h1 = conn.execute("SELECT password_hash FROM students ORDER BY student_id").fetchall()
    second = run(conn, [row("N1"), row("E1", password="new-password")])
    assert second.hashed_passwords == 0
    assert second.counts["unchanged"] == 2
    assert conn.execute("SELECT password_hash FROM students ORDER BY student_id").fetchall() == h1
    third = run(conn, [row("N1", password="changed-pw"), row("E1", password="")])
    assert third.hashed_passwords == 1
    assert (third.counts["updated"], third.counts["unchanged"]) == (1, 1)


def test_hash_many_keeps_order_and_uses_the_workers() -> None:
    hasher = PasswordHasher(Argon2Settings(time_cost=1, memory_kib=64, parallelism=1, workers=2))
    # the first hash of each worker thread waits for the other worker's first hash: if the
    # hashing were sequential, nobody would come and the barrier would break (timeout)
    barrier = threading.Barrier(2, timeout=20)
    real, started = hasher._argon2, set()

    class BothWorkersAtOnce:
        def hash(self, password: str) -> str:
            me = threading.current_thread().name
            if me not in started:
                started.add(me)
                barrier.wait()
            return real.hash(password)

    hasher._argon2 = BothWorkersAtOnce()
    passwords = [f"password-{i}" for i in range(20)]
    hashes = hasher.hash_many(passwords)
    hasher._argon2 = real
    assert len(started) == 2
    assert len(hashes) == 20
    assert all(hasher.verify(h, p) for h, p in zip(hashes, passwords, strict=True))
    assert len(set(hashes)) == 20  # salted


def test_default_argon2_parameters_are_at_least_owasp_minimum(monkeypatch) -> None:
    for name in ("EAMS_ARGON2_TIME_COST", "EAMS_ARGON2_MEMORY_KIB", "EAMS_ARGON2_PARALLELISM"):
        monkeypatch.delenv(name, raising=False)
    settings = config.argon2_settings()
    assert settings.memory_kib >= 19456 and settings.time_cost >= 2
    assert PasswordHasher(settings).hash("x" * 8).startswith("$argon2id$v=19$m=19456,t=2,p=1$")
