"""`eams process` on inputs and error-file paths that are not the ordinary case."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from eams_pipeline import cli
from eams_pipeline_tests.builders import csv_bytes, district_doc, load, row

LIMIT_AS = 2 * 1024**3


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def eams_capped(
    *args: str, cwd: Path, url: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`eams` as a real process with at most 2 GiB of memory and a timeout."""
    return subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", *args],
        cwd=cwd,
        env={**os.environ, "EAMS_DATABASE_URL": url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_cap_memory,
        check=False,
    )


@pytest.fixture
def district(db_url: str) -> str:
    with psycopg.connect(db_url) as conn:
        load(conn, district_doc())
    return db_url


def _uploads(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT status, rows, errors, error_codes FROM uploads ORDER BY upload_id"
        ).fetchall()


def test_a_device_is_refused_without_reading_it(district: str, tmp_path: Path) -> None:
    done = eams_capped("process", "--district", "D1", "/dev/zero", cwd=tmp_path, url=district)
    assert done.returncode == 1
    assert "not a regular file" in done.stderr and "character device" in done.stderr
    assert _uploads(district) == []


def test_a_fifo_is_refused_without_blocking(district: str, tmp_path: Path) -> None:
    fifo = tmp_path / "students.csv"
    os.mkfifo(fifo)
    done = eams_capped("process", "--district", "D1", str(fifo), cwd=tmp_path, url=district)
    assert done.returncode == 1 and "FIFO" in done.stderr
    assert _uploads(district) == []


def test_a_file_over_the_limit_is_rejected_as_file_too_large(
    district: str, tmp_path: Path
) -> None:
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1"), row("N2")]))
    done = eams_capped(
        "process",
        "--district",
        "D1",
        str(upload),
        cwd=tmp_path,
        url=district,
        env={"EAMS_MAX_UPLOAD_BYTES": "100"},
    )
    assert done.returncode == 2, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "rejected"
    assert summary["error_codes"] == {"FILE_TOO_LARGE": 1}
    assert summary["rows"] == 0 and summary["added"] == 0 and summary["errors"] == 0
    text = (tmp_path / summary["error_file"]).read_text()
    assert "FILE_TOO_LARGE" in text and "at most 100 bytes" in text
    assert _uploads(district) == [("rejected", 0, 0, {"FILE_TOO_LARGE": 1})]
    # at the limit it is read as usual
    at_limit = eams_capped(
        "process",
        "--district",
        "D1",
        str(upload),
        cwd=tmp_path,
        url=district,
        env={"EAMS_MAX_UPLOAD_BYTES": str(upload.stat().st_size)},
    )
    assert at_limit.returncode == 0 and json.loads(at_limit.stdout)["added"] == 2


def test_an_errors_out_in_a_missing_directory_is_refused_before_anything_is_applied(
    district: str, tmp_path: Path
) -> None:
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1"), row("N2", grade="99")]))
    missing = tmp_path / "nope" / "errors.csv"
    done = eams_capped(
        "process", "--district", "D1", str(upload), "--errors-out", str(missing),
        cwd=tmp_path, url=district,
    )  # fmt: skip
    assert done.returncode == 1 and "does not exist" in done.stderr
    assert _uploads(district) == []


@pytest.mark.parametrize("spelling", ["same", "relative"])
def test_an_errors_out_equal_to_the_input_is_refused(
    district: str, tmp_path: Path, spelling: str
) -> None:
    upload = tmp_path / "students.csv"
    content = csv_bytes([row("N1"), row("N2", grade="99")])
    upload.write_bytes(content)
    target = str(upload) if spelling == "same" else "./students.csv"
    done = eams_capped(
        "process", "--district", "D1", str(upload), "--errors-out", target,
        cwd=tmp_path, url=district,
    )  # fmt: skip
    assert done.returncode == 1 and "input file" in done.stderr
    assert upload.read_bytes() == content
    assert _uploads(district) == []


def test_an_error_file_that_cannot_be_written_after_the_commit_still_reports_the_outcome(
    district: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upload = tmp_path / "students.csv"
    upload.write_bytes(csv_bytes([row("N1"), row("N2", grade="99")]))
    monkeypatch.chdir(tmp_path)

    def disk_full(self: Path, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    code = cli.main(["process", "--district", "D1", str(upload)])
    out, err = capsys.readouterr()
    assert code == 0
    summary = json.loads(out)
    assert summary["added"] == 1 and summary["errors"] == 1 and summary["error_file"] is None
    assert "could not be written" in err and "No space left on device" in err
    assert _uploads(district)[0][0] == "partially_processed"
