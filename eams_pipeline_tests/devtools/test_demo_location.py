"""The demo's sample data: one clean upload, one with errors, one held by the change guard,
as the README promises."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import psycopg
import yaml

from eams_pipeline.core.master_data import parse_master_data
from eams_pipeline.db.setup import load_master_data
from eams_pipeline.devtools.demo import (
    apply_baseline,
    master_data,
    sample_clean,
    sample_held,
    sample_with_errors,
    write_env_file,
)
from eams_pipeline.devtools.sftp_server import LoopbackSftpServer
from eams_pipeline_tests.builders import run


def test_demo_samples_give_one_clean_and_one_partial_upload(
    conn: psycopg.Connection, sftp_server: LoopbackSftpServer
) -> None:
    doc = master_data(sftp_server)
    districts = parse_master_data(yaml.safe_dump(doc))
    assert [d.sftp.port for d in districts] == [sftp_server.port] * 3
    load_master_data(conn, districts)

    clean = run(conn, sample_clean(), "D001")
    assert clean.status == "processed" and clean.counts["errors"] == 0
    assert clean.counts["rows"] == 6

    partial = run(conn, sample_with_errors(), "D002")
    assert partial.status == "partially_processed"
    assert partial.counts["added"] == 4 and partial.counts["errors"] == 6
    assert set(partial.error_codes) == {
        "INVALID_GRADE",
        "SCHOOL_NOT_FOUND",
        "PASSWORD_REQUIRED",
        "INVALID_EMAIL",
        "NO_LICENSE_AVAILABLE",
        "STUDENT_NOT_FOUND",
    }

    conn.commit()
    now = dt.datetime.now(dt.UTC)
    apply_baseline(conn, "demo-secret", now)
    apply_baseline(conn, "demo-secret", now)  # once only
    [(base_rows, base_status)] = conn.execute(
        "SELECT rows, status FROM uploads JOIN districts USING (district_id) WHERE code = 'D003'"
    ).fetchall()
    assert (base_rows, base_status) == (40, "processed")
    held = run(conn, sample_held(), "D003")
    assert held.status == "held" and held.counts["deactivated"] == 32
    assert held.guard_trip["rule"] == "max_deactivated_pct"
    assert held.guard_trip["message"] == "deactivates 32 of 40 active students, 80%, limit 10%"

def test_sourcing_the_env_file_puts_the_projects_eams_on_path(tmp_path: Path) -> None:
    env_file = tmp_path / "env.sh"
    write_env_file(env_file, {"EAMS_DATABASE_URL": "postgresql://x@127.0.0.1/demo db"})
    found = subprocess.run(
        [
            "bash",
            "-c",
            f'PATH=/usr/bin:/bin; source {env_file}; command -v eams; echo "$EAMS_DATABASE_URL"',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    assert found == [str(Path(sys.executable).parent / "eams"), "postgresql://x@127.0.0.1/demo db"]
    assert env_file.stat().st_mode & 0o077 == 0  # it holds secrets
