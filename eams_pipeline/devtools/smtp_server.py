"""A real SMTP server on 127.0.0.1 that keeps every message (aiosmtpd, in-process).

Messages are written to ``<maildir>/<UTC timestamp>-<n>.eml`` and kept in memory in
:attr:`LoopbackSmtpServer.messages`. Optional password authentication and TLS (STARTTLS
or implicit TLS) let tests exercise the same paths as a production relay.

    with LoopbackSmtpServer(tmp_path / "mail") as server:
        SmtpResource(port=server.port).send(message)
        assert server.messages[0]["Subject"] == message["Subject"]
"""

from __future__ import annotations

import email
import email.policy
import hmac
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted message with its SMTP envelope."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    path: Path


class _EphemeralPortController(Controller):
    """aiosmtpd's Controller, able to bind port 0 (it probes ``self.port`` after binding)."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class LoopbackSmtpServer:
    """An SMTP server on 127.0.0.1 (``port=0``: ephemeral) that stores what it receives.

    ``users`` (username -> password) turns on AUTH PLAIN/LOGIN and requires it.
    ``tls_context`` offers STARTTLS with that server context, or, with
    ``implicit_tls=True``, serves TLS from the first byte (SMTPS).
    """

    def __init__(
        self,
        maildir: Path,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        users: dict[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
    ) -> None:
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        self.maildir = Path(maildir)
        self.host = host
        self._requested_port = port
        self._users = dict(users or {})
        self._tls_context = tls_context
        self._implicit_tls = implicit_tls
        self._lock = threading.Lock()
        self._counter = 0
        self.received: list[ReceivedMail] = []
        self.messages: list[EmailMessage] = []
        self._controller: _EphemeralPortController | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (only while running)."""
        if self._controller is None:
            raise RuntimeError("the SMTP server is not running")
        return int(self._controller.port)

    def start(self) -> None:
        """Bind the port and serve in a background thread; returns once it answers."""
        if self._controller is not None:
            raise RuntimeError("the SMTP server is already running")
        self.maildir.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"server_hostname": "localhost"}
        if self._users:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=self._tls_context is not None,
            )
        if self._implicit_tls:
            kwargs["ssl_context"] = self._tls_context
        elif self._tls_context is not None:
            kwargs["tls_context"] = self._tls_context
        controller = _EphemeralPortController(
            _Handler(self), hostname=self.host, port=self._requested_port, **kwargs
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop serving and release the port; received messages are kept."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> LoopbackSmtpServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for(self, count: int, timeout_seconds: float = 5) -> list[EmailMessage]:
        """Block until at least ``count`` messages arrived; returns them all."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"expected {count} messages, got {len(self.messages)}")
            time.sleep(0.02)

    def _store(self, mail_from: str, rcpt_tos: list[str], wire: bytes) -> None:
        content = wire.replace(b"\r\n", b"\n")  # stored with local line endings, as MDAs do
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            path = self._write_new_file(content)
            self.received.append(ReceivedMail(mail_from, tuple(rcpt_tos), message, path))
            self.messages.append(message)

    def _write_new_file(self, content: bytes) -> Path:
        """``<maildir>/<UTC timestamp>-<n>.eml``; never overwrites an existing file."""
        while True:
            self._counter += 1
            now = time.time()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            micros = int(now % 1 * 1_000_000)
            path = self.maildir / f"{stamp}.{micros:06d}Z-{self._counter:04d}.eml"
            try:
                with path.open("xb") as handle:
                    handle.write(content)
            except FileExistsError:
                continue
            return path

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username = auth_data.login.decode("utf-8", "replace")
        expected = self._users.get(username)
        ok = expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), auth_data.password
        )
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd replies


class _Handler:
    def __init__(self, owner: LoopbackSmtpServer) -> None:
        self._owner = owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8")
        self._owner._store(envelope.mail_from or "", list(envelope.rcpt_tos), content)
        return "250 Message accepted for delivery"
