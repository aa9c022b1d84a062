"""One demo per state directory: the first holds `<state>/demo.lock` (flock, its PID inside)
for its lifetime; a second `eams demo` (what `scripts/demo` runs) refuses to start, naming
the lock and the PID, before it touches anything. A demo that reuses an earlier demo's
database says how to start over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from eams_pipeline.devtools.demo import (
    LOCK_FILE,
    DemoAlreadyRunning,
    clear_state,
    demo_lock,
    drop_databases,
    prepare_databases,
    reuse_note,
)

HOLD = """
import sys, time
from pathlib import Path
from eams_pipeline.devtools.demo import demo_lock
with demo_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/eams_demo?connect_timeout=2"


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding the demo lock of tmp_path/state."""
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "locked\n"
    yield state, process
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def _demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", "demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_second_demo_refuses_to_start_and_names_the_lock_and_the_pid(
    holder, tmp_path: Path
) -> None:
    state, process = holder
    (state / "secrets.json").write_text("{}")  # what --reset would remove
    lock = state / LOCK_FILE
    assert lock.read_text() == f"{process.pid}\n"
    refused = _demo(
        "--state-dir", str(state), "--database-url", UNREACHABLE, "--reset", cwd=tmp_path
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        f"eams: error: another demo of this checkout is running (PID {process.pid}, holding "
        f"the lock {lock}): stop it first (Ctrl-C in its terminal, or kill {process.pid}), or "
        "give this one another --state-dir and --database-url\n"
    )
    assert (state / "secrets.json").read_text() == "{}"  # nothing was reset

    # the lock goes with its process, however it ends
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    with demo_lock(state) as held:
        assert held == lock and lock.read_text() == f"{os.getpid()}\n"


def test_reset_empties_the_state_but_keeps_the_lock_it_holds(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with demo_lock(state) as lock:
        (state / "sftp" / "d001").mkdir(parents=True)
        (state / "secrets.json").write_text("{}")
        (state / "link").symlink_to(tmp_path)
        clear_state(state)
        assert [p.name for p in state.iterdir()] == [LOCK_FILE]
        assert tmp_path.exists()  # a link is removed, never followed
        # still locked: the same file, held
        taken = pytest.raises(DemoAlreadyRunning, match=f"PID {os.getpid()}, holding the lock")
        with taken, demo_lock(state):
            pass
        assert lock.exists()


def test_a_reused_database_is_named_with_how_to_start_over(db_url: str, tmp_path: Path) -> None:
    url = make_conninfo(db_url, dbname=f"eams_demo_test_{uuid.uuid4().hex[:8]}")
    try:
        assert prepare_databases(url) is True
        assert prepare_databases(url) is False  # the second start reuses it
    finally:
        drop_databases(url)
    name = url.split("dbname=")[1].split()[0]
    assert reuse_note(url, tmp_path / "state") == (
        f"reusing the demo database {name} and {tmp_path / 'state'} of an earlier demo (its "
        "students, uploads and Dagster runs are kept); to start over, stop this demo and run "
        "`scripts/demo --reset`"
    )
