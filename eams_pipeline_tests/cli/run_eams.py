"""Running the real `eams` command on a pseudo-terminal, as a person runs it, answering its
prompts there (`cli_runner.eams` runs it with pipes, as a script does)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from eams_pipeline_tests.builders import district_doc
from eams_pipeline_tests.cli_runner import eams

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@dataclass
class TerminalRun:
    returncode: int
    output: str  # what the terminal showed (stdout, and stderr unless it was piped), \n ends
    stderr: str  # when stderr was a pipe; else ""


def eams_on_terminal(
    *args: str,
    cwd: Path,
    url: str,
    answers: dict[str, str] | None = None,
    stderr_on_terminal: bool = True,
    timeout: float = 120,
) -> TerminalRun:
    """`eams ARGS` with standard input and output (and error, unless `stderr_on_terminal` is
    false) on a pseudo-terminal of 40x160; each time the output ends with a key of
    `answers` (a prompt), its value is typed."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, "EAMS_DATABASE_URL": url, "TERM": "xterm", "COLUMNS": "160"}
    process = subprocess.Popen(
        [sys.executable, "-m", "eams_pipeline.cli", *args],
        cwd=cwd,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave if stderr_on_terminal else subprocess.PIPE,
        start_new_session=True,
    )
    os.close(slave)
    pending = dict(answers or {})
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None and not select.select([master], [], [], 0)[0]:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError as exc:  # EIO: every writer of the terminal has closed it
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            seen += chunk
            text = _ANSI.sub("", seen.decode("utf-8", "replace")).rstrip(" ")
            for prompt in list(pending):
                if text.endswith(prompt):
                    os.write(master, pending.pop(prompt).encode() + b"\r")
        else:
            process.kill()
            raise TimeoutError(f"eams {' '.join(args)} did not finish in {timeout} s")
        stderr = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
        returncode = process.wait(timeout=30)
    finally:
        os.close(master)
    output = _ANSI.sub("", seen.decode("utf-8", "replace")).replace("\r\n", "\n")
    return TerminalRun(returncode, output, stderr)


def load_districts(url: str, tmp_path: Path, *docs: dict) -> None:
    setup = tmp_path / "setup.yaml"
    setup.write_text(yaml.safe_dump({"districts": list(docs) or [district_doc()]}))
    done = eams("setup", "load", str(setup), cwd=tmp_path, url=url)
    assert done.returncode == 0, done.stderr
