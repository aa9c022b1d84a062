"""Running the real `eams` command in a child process, as a user or a script would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def eams(*args: str, cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EAMS_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "eams_pipeline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
