"""Reading an upload from the local file system (`eams process FILE`), safely.

Only a regular file is read (a FIFO would block forever, a device such as /dev/zero would
never end), and never more than the upload limit plus one byte.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1024 * 1024


class NotARegularFile(ValueError):
    """The path names a FIFO, a device, a socket or a directory."""


@dataclass(frozen=True)
class LocalUpload:
    data: bytes  # empty when too_large
    size: int  # bytes (when too large: at least this many)
    too_large: bool


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{path} is a {_kind(mode)}, not a regular file: refused")


def read_upload_file(path: Path, limit: int) -> LocalUpload:
    """The content of the regular file `path`, unless it is larger than `limit` bytes."""
    _require_regular(path, os.stat(path).st_mode)
    # O_NONBLOCK: should a FIFO be swapped in after the stat, opening it does not block
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        _require_regular(path, st.st_mode)
        if st.st_size > limit:
            return LocalUpload(b"", st.st_size, too_large=True)
        chunks, total = [], 0
        while total <= limit:  # the file may grow while it is read: never past limit + 1
            chunk = f.read(min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            return LocalUpload(b"", total, too_large=True)
        return LocalUpload(b"".join(chunks), total, too_large=False)
