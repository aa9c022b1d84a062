"""The district's SFTP directory, on paramiko.

Each district has its own SFTP account whose ``root`` holds ``incoming/``, ``errors/`` and
``processed/`` (SPEC §6). The server's host key is always pinned from master data: no
``known_hosts`` file, no SSH agent and no key discovery in ``~/.ssh`` are ever used.

Failures are mapped to a small hierarchy so callers can decide what to do:

- :class:`SftpTransientError`: the server could not be reached or dropped the connection
  (refused, reset, timeout, DNS failure, EOF). A sensor tick skips and tries again later.
- :class:`SftpAuthError`: the credentials are missing or were rejected.
- :class:`SftpHostKeyError`: the server's key is not the pinned one (or none is pinned).
- :class:`SftpError`: anything else, e.g. a permission problem on the server.

Messages name ``user@host:port``, never a password.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import io
import posixpath
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import paramiko
import tenacity
from cryptography.exceptions import UnsupportedAlgorithm
from paramiko.pkey import UnknownKeyType
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR, SFTPError
from paramiko.sftp_attr import SFTPAttributes
from paramiko.ssh_exception import SSHException

from eams_pipeline.config import ConfigError, env_secret
from eams_pipeline.core.master_data import SftpAccount
from eams_pipeline.core.names import CHECK, DISTRICT_DIRS, INCOMING, PROCESSED
from eams_pipeline.core.remote_files import RemoteFile

_KEY_ERRORS = (SSHException, UnknownKeyType, UnsupportedAlgorithm)
# Host key algorithms that a pinned key of the given type can be verified with.
_HOST_KEY_ALGORITHMS = {"ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]}


class SftpError(Exception):
    """An SFTP operation failed."""


class SftpTransientError(SftpError):
    """The server could not be reached or dropped the connection; try again later."""


class SftpAuthError(SftpError):
    """The credentials are missing or were rejected by the server."""


class SftpHostKeyError(SftpError):
    """The server's host key is not the pinned one, or no valid key is pinned."""


class SftpPathError(SftpError, ValueError):
    """A path is not a plain relative path inside the district's root."""


class SftpFileNotFoundError(SftpError, FileNotFoundError):
    """The remote file or directory does not exist."""


class SftpFileExistsError(SftpError, FileExistsError):
    """The remote target already exists."""


class SftpFileChangingError(SftpError):
    """A remote file kept changing: a client is still writing it."""


@dataclass(frozen=True)
class SettledRead:
    """A remote file read whole while it did not change (:meth:`SftpSession.read_settled`)."""

    data: bytes | None  # None: larger than allowed, not read
    stat: RemoteFile  # its size and time as read
    waited: float = 0.0  # seconds waited for it to stop changing (0: it had not changed)
    seen: tuple[str, ...] = ()  # what was seen changing, for the log


class _SftpClient(paramiko.SFTPClient):
    """paramiko's client, but directory listings keep names that are not UTF-8.

    paramiko decodes every name of a READDIR reply as strict UTF-8, so one file named in
    Latin-1 (OpenSSH servers pass names as raw bytes) makes every listing of the directory
    raise UnicodeDecodeError. Here the names are decoded with ``surrogateescape``: the other
    files are listed as before and the stray one can be shown (:func:`shown_name`)."""

    def listdir(self, path: str = ".") -> list[str]:
        return [f.filename for f in self.listdir_attr(path)]

    def listdir_attr(self, path: str = ".") -> list[SFTPAttributes]:
        path = self._adjust_cwd(path)
        kind, msg = self._request(CMD_OPENDIR, path)
        if kind != CMD_HANDLE:
            raise SFTPError("Expected handle")
        handle = msg.get_binary()
        entries = []
        try:
            while True:
                try:
                    kind, msg = self._request(CMD_READDIR, handle)
                except EOFError:  # the end of the directory
                    break
                if kind != CMD_NAME:
                    raise SFTPError("Expected name response")
                for _ in range(msg.get_int()):
                    filename = msg.get_string().decode("utf-8", "surrogateescape")
                    longname = msg.get_string().decode("utf-8", "surrogateescape")
                    attr = SFTPAttributes._from_msg(msg, filename, longname)
                    if filename not in (".", ".."):
                        entries.append(attr)
        finally:
            self._request(CMD_CLOSE, handle)
        return entries


def parse_host_key(line: str) -> paramiko.PKey:
    """The public key of an OpenSSH key line ``"<type> <base64> [comment]"``."""
    fields = line.split()
    if len(fields) < 2:
        raise SftpHostKeyError(f"pinned host key {line!r} is not '<type> <base64>'")
    key_type, blob = fields[0], fields[1]
    try:
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(blob, validate=True))
    except (binascii.Error, ValueError, paramiko.SSHException, UnknownKeyType) as exc:
        raise SftpHostKeyError(f"pinned host key of type {key_type!r} is invalid: {exc}") from exc


def _same_key(a: paramiko.PKey, b: paramiko.PKey) -> bool:
    return a.get_name() == b.get_name() and a.asbytes() == b.asbytes()


P = ParamSpec("P")
R = TypeVar("R")


def _mapped(func: Callable[P, R]) -> Callable[P, R]:
    """Map paramiko/socket errors raised by a session operation to the SftpError family."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        session = args[0]
        assert isinstance(session, SftpSession)
        where = session.settings.where
        try:
            return func(*args, **kwargs)
        except SftpError:
            raise
        except FileNotFoundError as exc:
            raise SftpFileNotFoundError(f"{where}: {func.__name__}: not found: {exc}") from exc
        except (TimeoutError, ConnectionError, EOFError, paramiko.SSHException) as exc:
            raise SftpTransientError(
                f"{where}: {func.__name__}: connection lost: {exc or type(exc).__name__}"
            ) from exc
        except OSError as exc:
            if _connection_gone(session.client):
                # paramiko's "Socket is closed": the server went away under the operation
                raise SftpTransientError(
                    f"{where}: {func.__name__}: connection lost: {exc}"
                ) from exc
            raise SftpError(f"{where}: {func.__name__} failed: {exc}") from exc

    return wrapper


def _connection_gone(client: paramiko.SFTPClient) -> bool:
    """Is the client's channel closed, or its transport down?"""
    channel = client.get_channel()
    if channel is None or channel.closed:
        return True
    transport = channel.get_transport()
    return transport is None or not transport.is_active()


class SftpSession:
    """An open SFTP connection confined to one district's root directory.

    Every path argument is relative to ``settings.root``; absolute paths and ``..`` are
    refused, so the session cannot reach outside the district's directory.
    """

    def __init__(self, settings: SftpAccount, client: paramiko.SFTPClient) -> None:
        self.settings = settings
        self._client = client
        root = settings.root or "/"
        self._root = posixpath.normpath(root) if root != "/" else "/"

    @property
    def client(self) -> paramiko.SFTPClient:
        """The underlying paramiko client (paths on it are not confined to the root)."""
        return self._client

    def remote_path(self, rel_path: str) -> str:
        """The absolute server path of ``rel_path``; refuses paths that leave the root."""
        if not rel_path or "\x00" in rel_path or "\\" in rel_path:
            raise SftpPathError(f"invalid remote path {rel_path!r}")
        if rel_path.startswith("/"):
            raise SftpPathError(f"remote path {rel_path!r} must be relative to the root")
        parts = rel_path.split("/")
        if any(part in ("..", ".") for part in parts):
            raise SftpPathError(f"remote path {rel_path!r} must not contain '.' or '..'")
        parts = [part for part in parts if part]
        if not parts:
            raise SftpPathError(f"invalid remote path {rel_path!r}")
        return posixpath.join(self._root, *parts)

    @staticmethod
    def _plain_name(name: str) -> str:
        if not name or "/" in name or name in (".", "..") or "\x00" in name or "\\" in name:
            raise SftpPathError(f"{name!r} is not a plain file name")
        return name

    @_mapped
    def list_incoming(self) -> list[RemoteFile]:
        """Regular files in ``incoming/``, sorted by name (stat only, nothing downloaded)."""
        return _regular_files(self._client.listdir_attr(self.remote_path(INCOMING)))

    @_mapped
    def list_dir(self, directory: str) -> list[RemoteFile]:
        """Regular files in ``directory`` (relative to the root), sorted by name; [] when the
        directory does not exist."""
        try:
            entries = self._client.listdir_attr(self.remote_path(directory))
        except FileNotFoundError:
            return []
        return _regular_files(entries)

    @_mapped
    def remove(self, directory: str, name: str) -> bool:
        """Delete ``directory/<name>``; False when it was already gone."""
        try:
            self._client.remove(self.remote_path(f"{directory}/{self._plain_name(name)}"))
        except FileNotFoundError:
            return False
        return True

    @_mapped
    def claim(self, name: str, processed_name: str, source: str = INCOMING) -> str:
        """Move ``<source>/<name>`` (``incoming/`` or ``check/``) to
        ``processed/<processed_name>`` by one atomic rename.

        Returns the new path relative to the root. Raises :class:`SftpFileNotFoundError`
        when the source is gone (someone else claimed it) and :class:`SftpFileExistsError`
        when the target already exists (it would otherwise be overwritten).
        """
        if source not in (INCOMING, CHECK):
            raise SftpPathError(f"{source!r}: files are claimed from {INCOMING}/ or {CHECK}/")
        source = self.remote_path(f"{source}/{self._plain_name(name)}")
        target_rel = f"{PROCESSED}/{self._plain_name(processed_name)}"
        target = self.remote_path(target_rel)
        if self._exists(target):
            raise SftpFileExistsError(f"{self.settings.where}: {target} already exists")
        self._client.posix_rename(source, target)
        return target_rel

    @_mapped
    def read(self, rel_path: str) -> bytes:
        """The whole content of a remote file."""
        buffer = io.BytesIO()
        self._client.getfo(self.remote_path(rel_path), buffer)
        return buffer.getvalue()

    @_mapped
    def size(self, rel_path: str) -> int:
        """The size of a remote file in bytes (a stat: nothing is read)."""
        return int(self._client.stat(self.remote_path(rel_path)).st_size or 0)

    @_mapped
    def stat(self, rel_path: str) -> RemoteFile:
        """The size and modification time of a remote file (nothing is read)."""
        attrs = self._client.stat(self.remote_path(rel_path))
        return RemoteFile(
            name=posixpath.basename(rel_path),
            size=int(attrs.st_size or 0),
            mtime=int(attrs.st_mtime or 0),
        )

    def read_settled(
        self,
        rel_path: str,
        *,
        expected: tuple[int, int] | None,
        settle_seconds: float,
        max_wait_seconds: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> SettledRead:
        """The whole content of a file that a client may still be writing.

        A rename does not stop a client's open handle: a file claimed after its upload
        paused past the settle window can still grow. The file is stat-ed before and after
        the download; it is taken when the bytes read are as many as both stats say, both
        stats agree, and they are the (size, mtime) the sensor saw settle (``expected``,
        when known). Otherwise the file is watched until it has not changed for
        ``settle_seconds``, then read again the same way; :class:`SftpFileChangingError`
        after ``max_wait_seconds``. A file larger than ``max_bytes`` is not read."""
        before = self.stat(rel_path)
        seen: list[str] = []
        if before.size > max_bytes:
            return SettledRead(None, before)
        if expected is None or (before.size, before.mtime) == tuple(expected):
            data = self.read(rel_path)
            after = self.stat(rel_path)
            if _same(before, after) and len(data) == after.size:
                return SettledRead(data, after)
            seen.append(_change(before, after, len(data)))
        else:
            seen.append(
                f"the sensor saw {expected[0]} bytes / mtime {expected[1]}, the claimed file "
                f"has {before.size} bytes / mtime {before.mtime}"
            )
        start = clock()
        poll = min(5.0, max(settle_seconds / 4, 0.05))
        last, since = self.stat(rel_path), clock()
        while True:
            if clock() - start > max_wait_seconds:
                raise SftpFileChangingError(
                    f"{self.settings.where}: {rel_path} is still changing after "
                    f"{max_wait_seconds:g}s ({'; '.join(seen[-3:])}): a client is still "
                    "writing it"
                )
            sleep(poll)
            now = self.stat(rel_path)
            if not _same(now, last):
                seen.append(_change(last, now, None))
                last, since = now, clock()
                continue
            if clock() - since < settle_seconds:
                continue
            if last.size > max_bytes:
                return SettledRead(None, last, clock() - start, tuple(seen))
            data = self.read(rel_path)
            after = self.stat(rel_path)
            if _same(last, after) and len(data) == after.size:
                return SettledRead(data, after, clock() - start, tuple(seen))
            seen.append(_change(last, after, len(data)))
            last, since = after, clock()

    @_mapped
    def sha256(self, rel_path: str) -> tuple[int, str]:
        """The size and hex SHA-256 of a remote file's content, streamed (not kept in memory)."""
        digest = hashlib.sha256()
        size = 0
        with self._client.open(self.remote_path(rel_path), "rb") as remote:
            remote.prefetch()
            while chunk := remote.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    @_mapped
    def exists(self, rel_path: str) -> bool:
        return self._exists(self.remote_path(rel_path))

    @_mapped
    def put_atomic(self, rel_path: str, data: bytes) -> None:
        """Write ``data`` to a hidden temporary name, then rename it over ``rel_path``.

        Readers see either the old file or the complete new one, never a partial write.
        Temporary files of earlier attempts at ``rel_path`` that were cut off (connection
        lost, worker killed) are removed once the new file is in place.
        """
        final = self.remote_path(rel_path)
        directory, name = posixpath.split(final)
        prefix = f".{name}.tmp-"
        temp = posixpath.join(directory, f"{prefix}{secrets.token_hex(8)}")
        try:
            self._client.putfo(io.BytesIO(data), temp, file_size=len(data), confirm=True)
            self._client.posix_rename(temp, final)
        except BaseException:
            # the temp file may never have been created, or the connection may be gone
            with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                self._client.remove(temp)
            raise
        for stale in self._client.listdir(directory):
            if stale.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    self._client.remove(posixpath.join(directory, stale))

    @_mapped
    def ensure_dirs(self) -> None:
        """Create the district's directories under the root if missing (DISTRICT_DIRS:
        ``incoming/``, ``errors/``, ``processed/``, ``check/``, ``reports/``)."""
        for name in DISTRICT_DIRS:
            path = self.remote_path(name)
            if self._exists(path):
                continue
            try:
                self._client.mkdir(path)
            except OSError:
                if not self._exists(path):  # not created concurrently: a real failure
                    raise

    def _exists(self, path: str) -> bool:
        try:
            self._client.stat(path)
        except FileNotFoundError:
            return False
        return True


def _regular_files(entries: list[SFTPAttributes]) -> list[RemoteFile]:
    """The regular files of a directory listing, sorted by name."""
    files = [
        RemoteFile(name=e.filename, size=int(e.st_size or 0), mtime=int(e.st_mtime or 0))
        for e in entries
        if e.st_mode is None or stat.S_ISREG(e.st_mode)
    ]
    return sorted(files, key=lambda f: f.name)


def _same(a: RemoteFile, b: RemoteFile) -> bool:
    return (a.size, a.mtime) == (b.size, b.mtime)


def _change(before: RemoteFile, after: RemoteFile, read: int | None) -> str:
    text = f"{before.size} -> {after.size} bytes, mtime {before.mtime} -> {after.mtime}"
    return text + (f", {read} bytes read" if read is not None else "")


@dataclass(frozen=True)
class SftpConnector:
    """Opens :class:`SftpSession` objects for a district's :class:`SftpAccount`."""

    connect_timeout_seconds: float = 10
    banner_timeout_seconds: float = 10
    auth_timeout_seconds: float = 10
    operation_timeout_seconds: float = 30
    connect_attempts: int = 2  # attempts on transient connection errors
    retry_wait_seconds: float = 1

    @contextmanager
    def session(self, settings: SftpAccount) -> Iterator[SftpSession]:
        """Connect, verify the pinned host key, authenticate and open SFTP."""
        transport, client = self.connect(settings)
        try:
            yield SftpSession(settings, client)
        finally:
            client.close()
            transport.close()

    def connect(self, settings: SftpAccount) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
        """A new connection (transient failures retried), host key verified, SFTP open."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(SftpTransientError),
            stop=tenacity.stop_after_attempt(max(1, self.connect_attempts)),
            wait=tenacity.wait_fixed(self.retry_wait_seconds),
            reraise=True,
        )
        return retrying(self._connect, settings)

    def _connect(self, settings: SftpAccount) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
        where = settings.where
        pinned = parse_host_key(settings.host_key) if settings.host_key else None
        if pinned is None:
            raise SftpHostKeyError(f"{where}: no host key is pinned for this server")
        credential = _credential(settings)

        try:
            sock = socket.create_connection(
                (settings.host, settings.port), timeout=self.connect_timeout_seconds
            )
        except socket.gaierror as exc:
            raise SftpTransientError(f"{where}: cannot resolve host: {exc}") from exc
        except OSError as exc:
            raise SftpTransientError(f"{where}: cannot connect: {exc}") from exc

        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = self.banner_timeout_seconds
            transport.auth_timeout = self.auth_timeout_seconds
            _prefer_host_key_type(transport, pinned.get_name())
            self._handshake(transport, settings, pinned)
            _authenticate(transport, settings, credential)
            client = self._open_sftp(transport, settings)
        except BaseException:
            transport.close()
            raise
        return transport, client

    def _handshake(
        self, transport: paramiko.Transport, settings: SftpAccount, pinned: paramiko.PKey
    ) -> None:
        where = settings.where
        try:
            transport.start_client(timeout=self.connect_timeout_seconds)
        except paramiko.IncompatiblePeer as exc:
            raise SftpError(f"{where}: no common SSH algorithms: {exc}") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SftpTransientError(f"{where}: SSH handshake failed: {exc}") from exc
        server_key = transport.get_remote_server_key()
        if not _same_key(server_key, pinned):
            raise SftpHostKeyError(
                f"{where}: host key mismatch: the server presented {server_key.get_name()} "
                f"{server_key.fingerprint}, the pinned key is {pinned.get_name()} "
                f"{pinned.fingerprint}"
            )

    def _open_sftp(
        self, transport: paramiko.Transport, settings: SftpAccount
    ) -> paramiko.SFTPClient:
        try:
            client = _SftpClient.from_transport(transport)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SftpTransientError(f"{settings.where}: cannot open SFTP: {exc}") from exc
        if client is None:
            raise SftpError(f"{settings.where}: the server refused the SFTP subsystem")
        client.get_channel().settimeout(self.operation_timeout_seconds)
        return client


def _prefer_host_key_type(transport: paramiko.Transport, key_type: str) -> None:
    """Ask for the pinned key's type first, so a multi-key server presents that one."""
    options = transport.get_security_options()
    preferred = _HOST_KEY_ALGORITHMS.get(key_type, [key_type])
    available = list(options.key_types)
    first = [name for name in preferred if name in available]
    options.key_types = first + [name for name in available if name not in first]


def _credential(settings: SftpAccount) -> str | paramiko.PKey:
    """The private key if one is configured, else the password from the environment."""
    where = settings.where
    if settings.private_key_file:
        try:
            return paramiko.PKey.from_path(settings.private_key_file)
        except (
            OSError,
            ValueError,
            TypeError,
            SSHException,
            UnknownKeyType,
            UnsupportedAlgorithm,
        ) as e:
            raise SftpAuthError(
                f"{where}: cannot load private key file {settings.private_key_file}: "
                f"{type(e).__name__}: {e}"
            ) from e
    if settings.password_env:
        try:
            password = env_secret(settings.password_env)
        except ConfigError as exc:
            raise SftpAuthError(f"{where}: {exc}") from exc
        if not password:
            raise SftpAuthError(
                f"{where}: the password {settings.password_env} is not set: no variable "
                f"{settings.password_env} or {settings.password_env}_FILE, and no file "
                f"{settings.password_env} in EAMS_SECRETS_DIR"
            )
        return password
    raise SftpAuthError(f"{where}: neither password_env nor private_key_file is configured")


def _authenticate(
    transport: paramiko.Transport, settings: SftpAccount, credential: str | paramiko.PKey
) -> None:
    where = settings.where
    method = "password" if isinstance(credential, str) else "public key"
    try:
        if isinstance(credential, str):
            transport.auth_password(settings.username, credential, fallback=False)
        else:
            transport.auth_publickey(settings.username, credential)
    except paramiko.AuthenticationException as exc:
        raise SftpAuthError(f"{where}: {method} authentication failed") from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SftpTransientError(f"{where}: connection lost during authentication: {exc}") from exc
    if not transport.is_authenticated():
        raise SftpAuthError(f"{where}: {method} authentication failed")


def pool_key(settings: SftpAccount) -> tuple:
    """What a pooled connection is for: the server, the user, the pinned key and the
    credential's source (the root is per session). A changed key or credential in master
    data never reuses a connection made with the old one."""
    return (
        settings.host,
        settings.port,
        settings.username,
        settings.host_key,
        settings.password_env,
        settings.private_key_file,
    )


# How often an idle pooled connection's transport thread wakes up (paramiko: 0.1 s). Reads
# return as soon as data arrives; only noticing a local close() waits for it.
_POOLED_SOCKET_POLL_SECONDS = 5.0


@dataclass
class _Idle:
    transport: paramiko.Transport
    client: paramiko.SFTPClient
    since: float  # monotonic time it was given back


class SftpPool:
    """SSH/SFTP connections kept open between uses, per :func:`pool_key`, thread-safe.

    A session takes an idle connection of its key if one is open and has been idle less
    than ``idle_timeout_seconds``, else connects (pinned host key checked as always). When
    the session ends normally the connection goes back to the pool (at most
    ``max_idle_per_key`` of them per key); a session that raised closes its connection, so
    the next one reconnects. Connections idle longer than the timeout are closed when the
    pool is next used (:meth:`prune`). ``clock`` is injectable (monotonic seconds).
    """

    def __init__(
        self,
        connector: SftpConnector,
        *,
        idle_timeout_seconds: float = 300,
        max_idle_per_key: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connector = connector
        self.idle_timeout_seconds = idle_timeout_seconds
        self.max_idle_per_key = max_idle_per_key
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[_Idle]] = {}
        self.connects = 0  # new connections made (for tests and the fleet benchmark)
        self.reuses = 0

    @contextmanager
    def session(self, settings: SftpAccount) -> Iterator[SftpSession]:
        key = pool_key(settings)
        conn = self._take(key)
        if conn is None:
            transport, client = self.connector.connect(settings)
            # paramiko's transport thread wakes every 0.1 s to see whether it was closed;
            # hundreds of idle pooled connections would keep a core busy doing that
            with contextlib.suppress(OSError):
                transport.sock.settimeout(_POOLED_SOCKET_POLL_SECONDS)
            with self._lock:
                self.connects += 1
        else:
            transport, client = conn.transport, conn.client
        try:
            yield SftpSession(settings, client)
        except BaseException:
            _close(transport, client)
            raise
        self._give_back(key, transport, client)

    def _take(self, key: tuple) -> _Idle | None:
        stale: list[_Idle] = []
        found = None
        with self._lock:
            stale = self._expire_locked()
            idle = self._idle.get(key, [])
            while idle:
                conn = idle.pop()
                if conn.transport.is_active() and not conn.client.sock.closed:
                    found = conn
                    self.reuses += 1
                    break
                stale.append(conn)
            if not idle:
                self._idle.pop(key, None)
        for conn in stale:
            _close(conn.transport, conn.client)
        return found

    def _give_back(
        self, key: tuple, transport: paramiko.Transport, client: paramiko.SFTPClient
    ) -> None:
        if self.idle_timeout_seconds <= 0 or not transport.is_active():
            _close(transport, client)
            return
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle_per_key:
                idle.append(_Idle(transport, client, self._clock()))
                return
        _close(transport, client)

    def _expire_locked(self) -> list[_Idle]:
        now = self._clock()
        expired: list[_Idle] = []
        for key in list(self._idle):
            keep = []
            for conn in self._idle[key]:
                (expired if now - conn.since >= self.idle_timeout_seconds else keep).append(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return expired

    def prune(self) -> int:
        """Close the connections idle longer than the timeout; returns how many."""
        with self._lock:
            expired = self._expire_locked()
        for conn in expired:
            _close(conn.transport, conn.client)
        return len(expired)

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            _close(conn.transport, conn.client)


def _close(transport: paramiko.Transport, client: paramiko.SFTPClient) -> None:
    with contextlib.suppress(Exception):
        client.close()
    with contextlib.suppress(Exception):
        transport.close()


_POOLS: dict[tuple[SftpConnector, float], SftpPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(connector: SftpConnector, idle_timeout_seconds: float) -> SftpPool:
    """The process's pool for these connection settings (one per code-server or run process:
    every sensor tick and step of the process shares it)."""
    key = (connector, idle_timeout_seconds)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = SftpPool(connector, idle_timeout_seconds=idle_timeout_seconds)
        return pool
