"""A run worker's start-up (eams_pipeline/run_worker.py): the collector is paused from the
interpreter's start until the code location is loaded, then what was loaded is frozen and
the collector resumes; every other process is left alone. The hook is the one the image
and scripts/install write into site-packages."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from eams_pipeline import run_worker

PROBE = (
    "import gc, json, sys; state = [gc.isenabled()]\n"
    "if 'load' in sys.argv: import eams_pipeline.definitions\n"
    "print(json.dumps(state + [gc.isenabled(), gc.get_freeze_count()]))"
)


def _probe(*args: str) -> list:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_hook_is_installed_in_this_environment() -> None:
    hook = Path(sysconfig.get_paths()["purelib"]) / run_worker.HOOK_NAME
    assert hook.read_text(encoding="utf-8") == run_worker.HOOK_LINE


def test_a_run_worker_starts_with_the_collector_paused_until_the_code_is_loaded() -> None:
    # `dagster api execute_run ...` is how the Docker and Kubernetes launchers start one; a
    # run worker builds no district sensors, so loading the code location queries nothing
    paused, after, frozen = _probe("api", "execute_run", "load")
    assert paused is False
    assert after is True and frozen > 100_000  # Dagster, pandas, the pipeline: frozen


def test_other_processes_keep_their_collector() -> None:
    assert _probe() == [True, True, 0]
    assert _probe("api", "grpc") == [True, True, 0]  # a code server


def test_which_processes_are_run_workers() -> None:
    spawn = ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"]
    forked = [*spawn, "--multiprocessing-fork"]
    server = b"python\x00-m\x00dagster\x00api\x00grpc\x00"
    assert run_worker.is_run_worker_start(["dagster", "api", "execute_run", "{}"], b"")
    assert run_worker.is_run_worker_start(forked, server)  # a code server's run
    assert not run_worker.is_run_worker_start(forked, b"python\x00-m\x00pytest\x00")
    assert not run_worker.is_run_worker_start(spawn, server)
    assert not run_worker.is_run_worker_start(["dagster", "api", "grpc"], b"")
