"""A child process for the hashing crash test: `process_upload` of one file whose password
hasher SIGKILLs its own process in the middle of a batch, after `kill_after_batches`
batches were hashed (and committed by the engine). No product code knows about it.

    python -m eams_pipeline_tests.hash_crash_worker   # config in $EAMS_HASH_CRASH (JSON)
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence

import psycopg

from eams_pipeline import config
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.services.process import Engine, Upload, process_upload

ENV = "EAMS_HASH_CRASH"


class DyingHasher(PasswordHasher):
    """Hashes `kill_after` batches, then half of the next one, then SIGKILLs the process."""

    def __init__(self, kill_after: int) -> None:
        super().__init__(config.argon2_settings())
        self.kill_after = kill_after
        self.batches = 0

    def hash_many(self, passwords: Sequence[str]) -> list[str]:
        if self.batches == self.kill_after:
            super().hash_many(passwords[: len(passwords) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        self.batches += 1
        return super().hash_many(passwords)


def main() -> int:
    cfg = json.loads(os.environ[ENV])
    engine = Engine(
        secret=config.secret_key(),
        hasher=DyingHasher(cfg["kill_after_batches"]),
        hash_batch_size=cfg["batch_size"],
    )
    with open(cfg["file"], "rb") as f:
        data = f.read()
    with psycopg.connect(cfg["db_url"]) as conn:
        process_upload(conn, Upload(cfg["district"], data, key=cfg["key"]), engine)
    print("not killed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
