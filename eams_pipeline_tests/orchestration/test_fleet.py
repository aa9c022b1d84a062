"""A fleet of districts: pooled SFTP connections (real loopback server) and the cached
district settings the sensors read."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from eams_pipeline.core.master_data import SftpAccount
from eams_pipeline.devtools.sftp_server import LoopbackSftpServer
from eams_pipeline.io.sftp import SftpConnector, SftpHostKeyError, SftpPool, pool_key
from eams_pipeline.orchestration.district_directory import DistrictDirectory

pytest_plugins = ["eams_pipeline_tests.fixtures_servers"]

MakeSettings = Callable[..., SftpAccount]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pool(clock: FakeClock | None = None, idle: float = 300) -> SftpPool:
    connector = SftpConnector(connect_timeout_seconds=5, connect_attempts=1)
    if clock is None:
        return SftpPool(connector, idle_timeout_seconds=idle)
    return SftpPool(connector, idle_timeout_seconds=idle, clock=clock)


def test_a_second_session_reuses_the_connection(sftp_settings: MakeSettings) -> None:
    pool = _pool()
    settings = sftp_settings("d001")
    try:
        for _ in range(3):
            with pool.session(settings) as session:
                session.ensure_dirs()
                assert session.list_incoming() == []
        assert (pool.connects, pool.reuses, pool.idle_count()) == (1, 2, 1)
        # another account on the same server is another connection
        with pool.session(sftp_settings("d002")) as session:
            session.ensure_dirs()
        assert pool.connects == 2 and pool.idle_count() == 2
    finally:
        pool.close()
    assert pool.idle_count() == 0


def test_the_root_is_per_session_on_a_shared_connection(
    sftp_settings: MakeSettings, sftp_server: LoopbackSftpServer
) -> None:
    (sftp_server.user_dir("d001") / "a" / "incoming").mkdir(parents=True)
    (sftp_server.user_dir("d001") / "b" / "incoming").mkdir(parents=True)
    (sftp_server.user_dir("d001") / "b" / "incoming" / "students.csv").write_bytes(b"x")
    pool = _pool()
    try:
        with pool.session(sftp_settings("d001", root="/a")) as session:
            assert session.list_incoming() == []
        with pool.session(sftp_settings("d001", root="/b")) as session:
            assert [f.name for f in session.list_incoming()] == ["students.csv"]
        assert pool.connects == 1
    finally:
        pool.close()


def test_a_failed_session_closes_its_connection(sftp_settings: MakeSettings) -> None:
    pool = _pool()
    settings = sftp_settings("d001")
    try:
        with pytest.raises(RuntimeError), pool.session(settings):
            raise RuntimeError("boom")
        assert pool.idle_count() == 0
        with pool.session(settings) as session:
            session.ensure_dirs()
        assert pool.connects == 2
    finally:
        pool.close()


def test_idle_connections_expire(sftp_settings: MakeSettings) -> None:
    clock = FakeClock()
    pool = _pool(clock, idle=60)
    settings = sftp_settings("d001")
    try:
        with pool.session(settings) as session:
            session.ensure_dirs()
        clock.now += 59
        with pool.session(settings):
            pass
        assert (pool.connects, pool.reuses) == (1, 1)
        clock.now += 60
        assert pool.prune() == 1 and pool.idle_count() == 0
        with pool.session(settings):
            pass
        assert pool.connects == 2
    finally:
        pool.close()


def test_reconnects_after_the_server_went_away(
    tmp_path: Path, sftp_passwords: dict[str, str], sftp_settings: MakeSettings
) -> None:
    key_path = tmp_path / "restart_host_key"
    first = LoopbackSftpServer(tmp_path / "r", sftp_passwords, host_key_path=key_path)
    first.start()
    port = first.port
    settings = sftp_settings("d001", port=port, host_key=first.host_key_line)
    pool = _pool()
    try:
        with pool.session(settings) as session:
            session.ensure_dirs()
        assert pool.idle_count() == 1
        first.stop()  # the pooled connection is cut
        second = LoopbackSftpServer(
            tmp_path / "r", sftp_passwords, host_key_path=key_path, port=port
        )
        second.start()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # paramiko notices the EOF in its thread
                with pool._lock:
                    idle = [c for conns in pool._idle.values() for c in conns]
                if not any(c.transport.is_active() for c in idle):
                    break
                time.sleep(0.05)
            with pool.session(settings) as session:
                assert session.list_incoming() == []
            assert pool.connects == 2
        finally:
            second.stop()
    finally:
        pool.close()


def test_the_pinned_host_key_is_checked_and_keys_the_pool(
    sftp_settings: MakeSettings, sftp_server: LoopbackSftpServer
) -> None:
    pool = _pool()
    settings = sftp_settings("d001")
    wrong = replace(
        settings,
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    )
    assert pool_key(wrong) != pool_key(settings)
    try:
        with pool.session(settings):
            pass
        # a pooled connection of the right key is never handed to another pinned key
        with pytest.raises(SftpHostKeyError), pool.session(wrong):
            pass
        assert pool.idle_count() == 1
    finally:
        pool.close()


class _Loader:
    def __init__(self, codes: list[str]) -> None:
        self.codes = codes
        self.calls = 0

    def __call__(self) -> list:
        self.calls += 1
        return [_District(code) for code in self.codes]


class _District:
    def __init__(self, code: str) -> None:
        self.code = code


def test_the_district_directory_reads_every_district_once_per_ttl() -> None:
    clock = FakeClock()
    loader = _Loader(["D1", "D2"])
    directory = DistrictDirectory(loader, ttl_seconds=60, clock=clock)
    assert directory.get("D1").code == "D1"  # type: ignore[union-attr]
    assert directory.get("D2").code == "D2"  # type: ignore[union-attr]
    assert directory.get("D9") is None
    assert loader.calls == 1
    loader.codes = ["D2", "D9"]  # master data changed
    clock.now += 59
    assert directory.get("D1") is not None and loader.calls == 1
    clock.now += 1
    assert directory.get("D1") is None
    assert directory.get("D9") is not None
    assert loader.calls == 2 == directory.loads


def test_a_run_worker_builds_no_district_sensors(monkeypatch: pytest.MonkeyPatch) -> None:
    from eams_pipeline.orchestration import code_location as definitions

    assert not definitions.is_run_worker()  # the test process is not a run worker
    monkeypatch.setattr("sys.argv", ["dagster", "api", "execute_run", "{}"])
    assert definitions.is_run_worker()
    monkeypatch.setattr(
        definitions, "district_codes_from_database", lambda: pytest.fail("no query in a run")
    )
    defs = definitions.build_definitions()
    assert {s.name for s in defs.sensors or []} == {
        "eams_operator_alerts",
        "eams_district_partitions",
        "eams_upload_requests",
    }
    assert defs.resolve_job_def("upload_job") is not None
