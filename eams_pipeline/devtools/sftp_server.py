"""A real SFTP server on 127.0.0.1 for tests and the local demo (asyncssh, in-process).

Each user is chrooted to ``base_dir/<username>``, so one district never sees another's
files. The server runs its own asyncio event loop in a background thread, which lets
blocking clients (paramiko) talk to it from the calling thread.

    with LoopbackSftpServer(tmp_path, {"d001": "secret"}) as server:
        settings = SftpAccount("127.0.0.1", server.port, "d001", server.host_key_line, "/")
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import asyncssh

DEFAULT_HOST = "127.0.0.1"
_START_TIMEOUT_SECONDS = 15


class _SshServer(asyncssh.SSHServer):
    """Password and public-key authentication against the in-memory user tables."""

    def __init__(self, owner: LoopbackSftpServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        keys = self._owner._authorized_keys.get(username)
        if keys and self._conn is not None:
            self._conn.set_authorized_keys(asyncssh.import_authorized_keys(keys))
        return True  # every user must authenticate

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        expected = self._owner._users.get(username)
        return expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), password.encode("utf-8")
        )

    def public_key_auth_supported(self) -> bool:
        return bool(self._owner._authorized_keys)


# Tests: awaited by the server with a file's local path (bytes) before it opens the file
# (and the open flags), or after it read from it (the offset and the bytes it will send).
OpenHook = Callable[[bytes, int], Awaitable[None]]
ReadHook = Callable[[bytes, int, bytes], Awaitable[None]]


class _SftpServer(asyncssh.SFTPServer):
    """asyncssh's SFTP server, chrooted, calling the owner's test hooks if any are set."""

    def __init__(self, chan: asyncssh.SSHServerChannel, chroot: bytes, owner: LoopbackSftpServer):
        super().__init__(chan, chroot=chroot)
        self._owner = owner

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        if self._owner.on_open is not None:
            await self._owner.on_open(self.map_path(path), pflags)
        return super().open(path, pflags, attrs)

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        data = super().read(file_obj, offset, size)
        assert isinstance(data, bytes)
        if self._owner.after_read is not None:
            await self._owner.after_read(getattr(file_obj, "name", b""), offset, data)
        return data


class LoopbackSftpServer:
    """An SFTP server on 127.0.0.1 whose users are chrooted to ``base_dir/<username>``.

    ``users`` maps usernames to passwords; ``authorized_keys`` maps usernames to the text
    of an OpenSSH ``authorized_keys`` file (one or more public key lines). The host key is
    read from ``host_key_path``, generated there (ed25519) if the file does not exist, or
    generated in memory when no path is given. ``port=0`` binds an ephemeral port; read
    the bound one from :attr:`port` after :meth:`start`.

    Tests may set :attr:`on_open` and :attr:`after_read` (coroutine functions, see
    ``OpenHook`` and ``ReadHook``) to act at a precise point of a client's transfer, e.g.
    let another client finish writing a file right after this one read its end.
    """

    def __init__(
        self,
        base_dir: Path,
        users: dict[str, str],
        host_key_path: Path | None = None,
        authorized_keys: dict[str, str] | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.host = host
        self._requested_port = port
        self._users = dict(users)
        self._authorized_keys = dict(authorized_keys or {})
        self._host_key = _load_or_create_host_key(host_key_path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._port: int | None = None
        self.on_open: OpenHook | None = None
        self.after_read: ReadHook | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (only while running)."""
        if self._port is None:
            raise RuntimeError("the SFTP server is not running")
        return self._port

    @property
    def host_key_line(self) -> str:
        """The host's public key as ``"ssh-ed25519 AAAA..."``, the line a client pins."""
        line = self._host_key.export_public_key("openssh").decode("ascii")
        return " ".join(line.split()[:2])

    @property
    def running(self) -> bool:
        return self._acceptor is not None

    def user_dir(self, username: str) -> Path:
        """The directory a user is chrooted to (their SFTP ``/``)."""
        return self.base_dir / username

    def start(self) -> None:
        """Bind the port and serve in a background thread; returns once listening."""
        if self.running:
            raise RuntimeError("the SFTP server is already running")
        for username in {*self._users, *self._authorized_keys}:
            self.user_dir(username).mkdir(parents=True, exist_ok=True)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="loopback-sftp", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            future = asyncio.run_coroutine_threadsafe(self._listen(), loop)
            self._acceptor = future.result(timeout=_START_TIMEOUT_SECONDS)
        except BaseException:
            self._stop_loop()
            raise
        self._port = self._acceptor.get_port()

    def stop(self) -> None:
        """Close the listener and every open connection; the port is released."""
        if self._loop is None:
            return
        if self._acceptor is not None:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            future.result(timeout=_START_TIMEOUT_SECONDS)
        self._stop_loop()

    def __enter__(self) -> LoopbackSftpServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            self.host,
            self._requested_port,
            server_factory=lambda: _SshServer(self),
            server_host_keys=[self._host_key],
            sftp_factory=self._sftp_session,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            reuse_address=True,
        )

    def _sftp_session(self, chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        username = chan.get_extra_info("username")
        chroot = self.user_dir(username)
        chroot.mkdir(parents=True, exist_ok=True)
        return _SftpServer(chan, os.fsencode(chroot), self)

    async def _shutdown(self) -> None:
        assert self._acceptor is not None
        self._acceptor.close()
        for conn in list(self._connections):
            conn.close()
        await self._acceptor.wait_closed()
        for conn in list(self._connections):
            await conn.wait_closed()
        self._acceptor = None
        self._port = None

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self._acceptor = None
        self._port = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=_START_TIMEOUT_SECONDS)
        loop.close()


def _load_or_create_host_key(path: Path | None) -> asyncssh.SSHKey:
    if path is None:
        return asyncssh.generate_private_key("ssh-ed25519")
    path = Path(path)
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key("openssh"))
    return key
