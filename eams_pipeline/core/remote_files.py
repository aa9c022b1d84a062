"""A file on a district's SFTP site as a listing shows it, and how its name is shown.

Pure: the SFTP adapter (:mod:`eams_pipeline.io.sftp`) builds these from its listings; the
sensors' decisions (:mod:`eams_pipeline.core.settle`, :mod:`eams_pipeline.core.alert_rules`)
read them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    """A directory entry as stat reports it; the content is not downloaded.

    ``name`` is the name's bytes as UTF-8, a byte that is not UTF-8 kept as a lone surrogate
    (``surrogateescape``, as :func:`os.fsdecode`): a server passes names as raw bytes, and a
    file named in Latin-1 must not stop the listing. Show it with :attr:`shown`."""

    name: str
    size: int
    mtime: int  # epoch seconds

    @property
    def shown(self) -> str:
        return shown_name(self.name)


def shown_name(name: str, limit: int = 200) -> str:
    """A remote name as it can be shown in a log, an email or the database: printable
    characters as they are, a byte that is not UTF-8 as ``\\xNN``, a control or invisible
    character as ``\\xNN``/``\\uNNNN``, a backslash doubled; cut at ``limit`` characters."""
    out = []
    for char in name:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif char.isprintable() and not 0xD800 <= code <= 0xDFFF:
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    text = "".join(out)
    return text if len(text) <= limit else text[:limit] + "..."
