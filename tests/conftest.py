"""Shared fixtures: a real nats-server per test (free port, own store), streams, services.

Every process a fixture starts is stopped when the test ends, pass or fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from schemas import example_path
from services.natsserver import NatsServer
from services.recorder import RecorderService
from services.settings import Settings
from services.streams import ensure_streams
from tests.helpers import ServiceProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", sync_interval="always").start()
    try:
        await server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(nats_server: NatsServer) -> Settings:
    return Settings(nats_url=nats_server.url, duplicate_window_s=120)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def streams(nc: nats.NATS, settings: Settings) -> None:
    await ensure_streams(nc.jetstream(), settings)


@pytest.fixture
async def recorder(streams: None, settings: Settings) -> AsyncIterator[RecorderService]:
    """A recorder in this process (FastStream broker plus Recorder)."""
    service = RecorderService(settings)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    """Start `casetrail serve ...` children; all are stopped at the end of the test."""
    started: list[ServiceProcess] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        proc = ServiceProcess(name, list(args), tmp_path / f"{name}-{len(started)}.log", env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def sample_lines() -> list[bytes]:
    return example_path().read_bytes().splitlines()
