"""A run worker for the fault tests: the upload job executed in a child process that the test
can SIGKILL at a precise point, and the job as a reconstructable target for re-executions.

The child runs ``dg.execute_job`` against the instance of $DAGSTER_HOME (the shipped
dagster.yaml: PostgreSQL storage), like the run worker ``dagster dev`` launches. A pause
point patches, in the child only, one call the run makes: once that call has returned (or,
for ``email``, just before it is made) the child prints ``paused <point>`` and sleeps until
the test kills it. No product code knows about these points.

    claimed    after the rename of incoming/students.csv into processed/
    archived   after the encrypted archive copy is written (upload_file not yet recorded)
    committed  after process_upload committed (upload_outcome not yet recorded)
    published  after the error file is renamed into place (error_report not yet recorded)
    email      just before the district's email is sent
    emailed    after the relay accepted the email (district_email not yet recorded)
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob

ENV = "EAMS_FAULT_PIPELINE"  # JSON: db_url, archive_dir, smtp_port
PAUSED = "paused"
_PAUSE_SECONDS = 600


def worker_config(db_url: str, archive_dir: str, smtp_port: int) -> str:
    return json.dumps({"db_url": db_url, "archive_dir": archive_dir, "smtp_port": smtp_port})


def upload_job() -> dg.JobDefinition:
    """The upload job with the test pipeline's resources (from $EAMS_FAULT_PIPELINE)."""
    from eams_pipeline.orchestration.code_location import build_definitions
    from eams_pipeline.orchestration.jobs import UPLOAD_JOB_NAME
    from eams_pipeline.orchestration.resources import (
        ArchiveResource,
        DatabaseResource,
        EngineResource,
        SftpResource,
        SmtpResource,
    )
    from eams_pipeline_tests.orchestration_env import DISTRICTS

    config = json.loads(os.environ[ENV])
    resources = {
        "db": DatabaseResource(url=config["db_url"]),
        "sftp": SftpResource(
            connect_timeout_seconds=5,
            banner_timeout_seconds=5,
            auth_timeout_seconds=5,
            operation_timeout_seconds=10,
            connect_attempts=1,
            retry_wait_seconds=0,
        ),
        "smtp": SmtpResource(port=config["smtp_port"], timeout_seconds=5),
        "archive": ArchiveResource(directory=config["archive_dir"]),
        "engine": EngineResource(),
    }
    defs = build_definitions(list(DISTRICTS), resources=resources, interval_seconds=1, settle=30)
    return defs.resolve_job_def(UPLOAD_JOB_NAME)


def reconstructable_upload_job() -> ReconstructableJob:
    """``upload_job`` for ``dg.execute_job``, built anew from $EAMS_FAULT_PIPELINE.

    Dagster keeps the last reconstructed definition (an lru_cache on ReconstructableJob):
    each test has its own database and archive, so the cache is cleared first.
    """
    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    return dg.reconstructable(upload_job)


_marker_fd: int | None = None  # the test's pipe, kept apart from Dagster's log capture


def _say(line: str) -> None:
    os.write(_marker_fd if _marker_fd is not None else 1, f"{line}\n".encode())


def _pause(point: str) -> None:
    _say(f"{PAUSED} {point}")
    time.sleep(_PAUSE_SECONDS)
    raise SystemExit(f"the test did not kill the worker paused at {point}")


def _after(owner: Any, name: str, point: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def patched(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _pause(point)
        return result

    setattr(owner, name, patched)


def _before(owner: Any, name: str, point: str) -> None:
    def patched(*args: Any, **kwargs: Any) -> Any:
        _pause(point)

    setattr(owner, name, patched)


def install_pause(point: str | None) -> None:
    from eams_pipeline.io import archive, sftp
    from eams_pipeline.orchestration import assets, resources

    if point is None:
        return
    if point == "claimed":
        _after(sftp.SftpSession, "claim", point)
    elif point == "archived":
        _after(archive.Archive, "store", point)
    elif point == "committed":
        _after(assets, "process_upload", point)
    elif point == "published":
        _after(sftp.SftpSession, "put_atomic", point)
    elif point == "email":
        _before(resources.SmtpResource, "send", point)
    elif point == "emailed":
        _after(resources.SmtpResource, "send", point)
    else:
        raise ValueError(f"unknown pause point {point!r}")


def main() -> None:
    """``python -c 'from eams_pipeline_tests.fault_worker import main; main()' SPEC``."""
    global _marker_fd
    spec = json.loads(sys.argv[1])
    # a step's stdout is redirected into its compute log: the markers use their own fd
    _marker_fd = os.dup(sys.stdout.fileno())
    install_pause(spec.get("pause"))
    from eams_pipeline.orchestration.partitions import UPLOAD_KEY_TAG, upload_run_config

    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            reconstructable_upload_job(),
            instance,
            tags=spec["tags"],
            run_config=upload_run_config(spec["tags"][UPLOAD_KEY_TAG]),
        )
    _say(f"finished {result.success}")


class Worker:
    """The child process running one upload run; the test kills it with SIGKILL."""

    def __init__(self, tags: dict[str, str], pause: str | None = None) -> None:
        spec = json.dumps({"tags": tags, "pause": pause})
        code = "from eams_pipeline_tests.fault_worker import main; main()"
        # Dagster's log lines, shown if it goes wrong; closed by stop()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, spec],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def log_tail(self, chars: int = 3000) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-chars:]

    def wait_for_line(self, prefix: str, timeout: float = 180) -> str:
        """The first line of the child's stdout starting with ``prefix``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"the worker did not print {prefix!r} in {timeout}s:\n{self.log_tail()}"
                )
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(
                    f"the worker exited ({self.proc.wait()}) before {prefix!r}:\n" + self.log_tail()
                )
            if line.startswith(prefix):
                return line.strip()

    def kill(self) -> None:
        """SIGKILL: no finally block, no atexit, no event written by the worker."""
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()
