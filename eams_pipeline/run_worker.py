"""A Dagster run worker's start-up: the cyclic garbage collector waits until the code is loaded.

A run worker (the child a code server spawns for a run, or ``dagster api execute_run`` in a
run container or pod) imports Dagster, its storage and this pipeline before its first step:
about a million objects, which the collector walks again and again while they are created,
and again at every full collection during the run. Pausing the collector until the code
location is loaded, and freezing what was loaded, takes about a third off a small run's CPU
(bench/fleet.py, "overhead"; the figures are in bench/RESULTS.md, "A small run's CPU").

So, in a run worker only:

- at interpreter start, the startup hook (``eams_pipeline_startup.pth`` in site-packages,
  written by :func:`main`, which scripts/install and the image run with
  ``python -c "import eams_pipeline.run_worker as w; w.main()"``) pauses the collector
  (:func:`pause_at_start`);
- once the code location is loaded (``eams_pipeline.definitions``), :func:`resume` freezes
  what is alive (``gc.freeze``: modules, classes, definitions, which live as long as the
  process anyway, are never walked again) and turns the collector back on for what the
  run creates.

Any other process (code server, daemon, webserver, CLI, tests) is left as it is. This module
imports nothing but the standard library: the hook runs at every interpreter start.
"""

from __future__ import annotations

import gc
import os
import sys

HOOK_NAME = "eams_pipeline_startup.pth"
# one line, executed by `site` at interpreter start; silent if the package is gone
HOOK_LINE = (
    'import sys; exec("try:\\n import eams_pipeline.run_worker as w\\nexcept ImportError:'
    '\\n pass\\nelse:\\n w.pause_at_start()")\n'
)

_paused = False


def is_run_worker_start(argv: list[str], parent_cmdline: bytes) -> bool:
    """Whether a process started with `argv` (sys.orig_argv) by a parent with
    `parent_cmdline` is a Dagster run worker: ``dagster api execute_run ...`` (Docker and
    Kubernetes run launchers), or a multiprocessing child spawned by a Dagster code server
    (its run workers: ``... spawn_main(...) --multiprocessing-fork``)."""
    if "api" in argv and "execute_run" in argv:
        return True
    spawned = "--multiprocessing-fork" in argv and any("spawn_main" in a for a in argv)
    return spawned and b"dagster" in parent_cmdline


def _parent_cmdline() -> bytes:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def pause_at_start() -> None:
    """Called by the startup hook: pause the collector if this process is a run worker."""
    global _paused
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if gc.isenabled() and is_run_worker_start(argv, _parent_cmdline()):
        gc.disable()
        _paused = True


def resume() -> None:
    """The code location is loaded: freeze what is alive and resume the collector (only
    where pause_at_start paused it)."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def install(site_packages: str | None = None) -> str:
    """Write the startup hook into site-packages (of this interpreter, by default); returns
    its path. (Imports here: the hook itself must stay cheap.)"""
    import sysconfig
    from pathlib import Path

    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / HOOK_NAME
    target.write_text(HOOK_LINE, encoding="utf-8")
    return str(target)


def main() -> None:
    """Write the hook and say where. Not run as ``python -m eams_pipeline.run_worker``: once
    the hook is installed, every interpreter imports this module at start, and runpy warns
    when the module it is asked to run is imported already."""
    print(f"startup hook written: {install()}")
