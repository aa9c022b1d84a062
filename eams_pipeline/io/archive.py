"""The pipeline's own copy of every raw upload, encrypted at rest (Fernet).

Uploads hold student passwords, so the archive never stores readable bytes (SPEC §3).
The keys are one or more comma-separated Fernet keys (``EAMS_ARCHIVE_KEY[_FILE]``, read
by :mod:`eams_pipeline.config`); the first encrypts, all of them decrypt, which lets an
operator rotate keys by prepending a new one. Files live in the archive directory
(``EAMS_ARCHIVE_DIR``) as ``<dir>/<district_code>/<upload_key>.csv.fernet``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from eams_pipeline.config import ConfigError

SUFFIX = ".csv.fernet"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


class ArchiveError(RuntimeError):
    """An archive file cannot be written or read back."""


class ArchiveConflictError(ArchiveError):
    """An archive file already exists for this upload with different content."""


@dataclass(frozen=True)
class ArchivedFile:
    path: str
    sha256: str  # of the plain bytes


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def generate_key() -> str:
    """A new Fernet key, for ``EAMS_ARCHIVE_KEY``."""
    return Fernet.generate_key().decode("ascii")


class Archive:
    """Encrypted files under ``directory``, one per (district, upload)."""

    def __init__(self, directory: Path | str, keys: str | list[str]) -> None:
        key_list = [k.strip() for k in keys.split(",")] if isinstance(keys, str) else keys
        key_list = [k for k in key_list if k]
        if not key_list:
            raise ConfigError("the archive needs at least one Fernet key")
        fernets = []
        for position, key in enumerate(key_list, start=1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    f"archive key #{position} is not a valid Fernet key (32 url-safe "
                    "base64-encoded bytes); generate one with `python -c 'from "
                    "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
                ) from exc
        self.directory = Path(directory)
        self._fernet = MultiFernet(fernets)

    sha256 = staticmethod(sha256)

    def path_for(self, district_code: str, upload_key: str) -> Path:
        return self.directory / _safe(district_code) / f"{_safe(upload_key)}{SUFFIX}"

    def keys(self, district_code: str) -> list[str]:
        """The upload keys archived for a district, sorted."""
        folder = self.directory / _safe(district_code)
        if not folder.is_dir():
            return []
        return sorted(
            p.name[: -len(SUFFIX)]
            for p in folder.iterdir()
            if p.name.endswith(SUFFIX) and not p.name.startswith(".")
        )

    def remove(self, district_code: str, upload_key: str) -> bool:
        """Delete an upload's archive copy (retention); False when it was not there."""
        try:
            self.path_for(district_code, upload_key).unlink()
        except FileNotFoundError:
            return False
        return True

    def store(self, district_code: str, upload_key: str, data: bytes) -> ArchivedFile:
        """Encrypt and write ``data``; storing the same bytes again is a no-op.

        Raises :class:`ArchiveConflictError` if different bytes are already archived
        under this key: an archived upload is never replaced.
        """
        digest = sha256(data)
        path = self.path_for(district_code, upload_key)
        if path.exists():
            existing = sha256(self.load(str(path)))
            if not hmac.compare_digest(existing, digest):
                raise ArchiveConflictError(
                    f"{path} already holds a different upload (sha256 {existing}, "
                    f"new {digest}); refusing to overwrite it"
                )
            return ArchivedFile(path=str(path), sha256=digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, self._fernet.encrypt(data))
        return ArchivedFile(path=str(path), sha256=digest)

    def load(self, path: str, expected_sha256: str | None = None) -> bytes:
        """Decrypt an archive file; the token's MAC proves it is intact and ours.

        With ``expected_sha256``, also checks that the plain bytes are the ones recorded.
        """
        try:
            token = Path(path).read_bytes()
        except OSError as exc:
            raise ArchiveError(f"cannot read archive file {path}: {exc.strerror}") from exc
        try:
            data = self._fernet.decrypt(token)
        except InvalidToken as exc:
            raise ArchiveError(
                f"cannot decrypt archive file {path}: wrong EAMS_ARCHIVE_KEY or a damaged file"
            ) from exc
        if expected_sha256 is not None and not hmac.compare_digest(
            sha256(data), expected_sha256.lower()
        ):
            raise ArchiveError(f"archive file {path} does not match sha256 {expected_sha256}")
        return data


def _safe(name: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} cannot be used in an archive file name")
    return name


def _write_atomic(path: Path, content: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename into place."""
    temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
