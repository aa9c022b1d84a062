"""LineProgress's batches (the Dagster run log: every write is an event in its storage)."""

from __future__ import annotations

import pytest

from eams_pipeline.services.progress import LineProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_without_batches_every_line_is_written_at_once() -> None:
    written: list[str] = []
    progress = LineProgress(written.append, clock=Clock())
    progress.finished("read", 0.5)
    progress.finished("validate", 0.25)
    assert written == ["read done in 0.50 s", "validate done in 0.25 s"]


def test_lines_are_written_together_per_batch_and_at_the_end() -> None:
    written: list[str] = []
    clock = Clock()
    with LineProgress(written.append, interval=5, batch_seconds=5, clock=clock) as progress:
        progress.finished("read", 0.5)
        clock.now = 1.0
        progress.finished("validate", 0.25)
        assert written == []  # held: less than 5 s since the first line
        clock.now = 6.0
        progress.started("hash")
        progress.advanced("hash", 0, 100)  # 6 s after the first held line: all three go
        assert written == [
            "read done in 0.50 s\nvalidate done in 0.25 s\nhash: 0/100 (0%), 0.0/s"
        ]
        clock.now = 7.0
        progress.finished("hash", 1.0)
    assert written[1:] == ["hash done in 1.00 s"]  # the rest when the upload ends


def test_the_lines_held_are_written_when_the_upload_fails() -> None:
    written: list[str] = []
    with (
        pytest.raises(RuntimeError),
        LineProgress(written.append, batch_seconds=5, clock=Clock()) as progress,
    ):
        progress.finished("read", 0.5)
        raise RuntimeError("the database went away")
    assert written == ["read done in 0.50 s"]
