"""`casetrail up`: the whole system on one machine, supervised.

An embedded nats-server with JetStream under DATA/nats, the streams, and every
service as its own child process (`casetrail serve ...`, as compose runs them),
each logging to DATA/logs. A service that dies is started again. SIGINT or
SIGTERM stops the services, then the server. Started again on the same DATA, it
carries on where it stopped: the log is the server's store, and each projection
keeps its position in its own file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from services import children, subjects
from services.access import CredentialStore, auth_conf, tls_conf
from services.connection import auth_options, connect, quiet, tls_context
from services.natsserver import NatsServer
from services.settings import Settings
from services.streams import ensure_streams

log = logging.getLogger("casetrail.up")

RESTART_LIMIT = 5  # restarts within RESTART_WINDOW before a service is given up
RESTART_WINDOW = 60.0


@dataclass
class Service:
    """A child process running `casetrail serve <name> ...`."""

    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    # The child's environment (credentials, TLS); None: this process's own.
    env: dict[str, str] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        env = env or self.env
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services", "serve", self.name, *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=children.die_with_parent(),  # noqa: PLW1509 (a prctl call only)
                env=env,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        children.stop(self.process, timeout)


async def wait_for_recorder(settings: Settings, timeout: float = 120.0) -> None:
    """Until a recorder answers on intake (an empty batch records nothing)."""
    nc = await connect(settings, "casetrail-up-probe", error_cb=quiet)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await nc.request(subjects.intake("up-probe"), b'{"events":[]}', timeout=2)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError("no recorder answered on intake") from None
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def wait_for_projection(settings: Settings, seq: int = 0, timeout: float = 120.0) -> int:
    """Until a projector answers, having applied `seq`; returns the position it answered at."""
    from services.queries import QueryClient, QueryError

    nc = await connect(settings, "casetrail-up-probe", error_cb=quiet)
    try:
        queries = QueryClient(nc, timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return (await queries.stats(min_seq=seq or None, wait_s=2))["as_of_seq"]
            except QueryError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no projector answered with log seq {seq} applied") from None
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def wait_for_api(host: str, port: int, timeout: float = 60.0) -> None:
    """Until the HTTP API answers (any HTTP answer: the API is up, whatever the projector does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /openapi.json HTTP/1.0\r\nHost: casetrail\r\n\r\n")
            await writer.drain()
            answered = (await reader.readline()).startswith(b"HTTP/")
            writer.close()
            if answered:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the HTTP API did not answer on {host}:{port}")
        await asyncio.sleep(0.2)


class System:
    """The embedded server and the services of `casetrail up`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 4222,
        http_port: int = 8080,
        services: tuple[str, ...] = ("recorder", "projector", "api"),
        sync_interval: str = "always",
        on_event: Callable[[str], None] = lambda message: None,
        auth: bool = False,
        publishers: tuple[str, ...] = ("cli", "demo"),
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_ca: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        # --auth: a user per role (services.access), seeds under DATA/credentials.
        self.credentials = CredentialStore(data_dir / "credentials") if auth else None
        users = auth_conf(self.credentials.ensure(publishers)) if self.credentials else ""
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and its key")
        tls = tls_conf(tls_cert, tls_key) if tls_cert and tls_key else ""
        self.server = NatsServer(
            data_dir / "nats", port=port, sync_interval=sync_interval, auth_conf=users, tls_conf=tls
        )
        self.settings = Settings.from_env(
            nats_url=self.server.url,
            credentials=self.credentials_of("operator"),
            tls_ca=str(tls_ca) if tls_ca else None,
        )
        self.http_port = http_port
        self.say = on_event
        self.services = [self._service(name) for name in services]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def credentials_of(self, identity: str) -> str | None:
        """The seed file of an identity (`operator`, `publisher-cli`, ...) under --auth."""
        return str(self.credentials.path(identity)) if self.credentials else None

    def settings_as(self, identity: str) -> Settings:
        return msgspec.structs.replace(self.settings, credentials=self.credentials_of(identity))

    def _service(self, name: str) -> Service:
        args = ["--nats", self.server.url]
        if name == "projector":
            args += ["--db", str(self.data_dir / "projections" / "casetrail.duckdb")]
        if name == "api":
            args += ["--host", "127.0.0.1", "--port", str(self.http_port)]
        env = None
        if self.credentials is not None or self.settings.tls_ca:
            role = {"recorder": "recorder", "projector": "projector"}.get(name, "reporter")
            env = {**os.environ, "CASETRAIL_CREDENTIALS": self.credentials_of(role) or ""}
            env["CASETRAIL_TLS_CA"] = self.settings.tls_ca or ""
        return Service(name, args, self.data_dir / "logs" / f"{name}.log", env=env)

    async def start(self) -> None:
        self.server.start()
        await self.server.wait_ready(**auth_options(self.settings), tls=tls_context(self.settings))
        self.say(f"nats-server listening on {self.server.url} (JetStream under {self.server.data_dir})")
        nc = await connect(self.settings, "casetrail-up")
        try:
            for report in await ensure_streams(nc.jetstream(), self.settings):
                self.say(f"stream {report.stream}: {report.outcome}")
                for drift in report.drift:
                    self.say(f"  drift: {drift.field} is {drift.actual!r}, expected {drift.expected!r}")
        finally:
            await nc.close()
        for service in self.services:
            service.start()
            self.say(f"{service.name} started (log: {service.log_path})")
        if any(s.name == "recorder" for s in self.services):
            await wait_for_recorder(self.settings)
        if any(s.name == "projector" for s in self.services):
            position = await wait_for_projection(self.settings)
            self.say(f"projector answering (log seq {position} applied)")
        if any(s.name == "api" for s in self.services):
            await wait_for_api("127.0.0.1", self.http_port)
            self.say(f"HTTP API on {self.api_url} (OpenAPI at {self.api_url}/docs)")

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart services that die, until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            if stop.is_set():
                break
            if not self.server.running:
                self.say(f"nats-server exited; see {self.server.log_path}")
                stop.set()
                break
            now = time.monotonic()
            for service in self.services:
                if service.process is None or service.running:
                    continue
                code = service.process.returncode
                service.restarts = [t for t in service.restarts if now - t < RESTART_WINDOW]
                if len(service.restarts) >= RESTART_LIMIT:
                    self.say(f"{service.name} keeps failing (exit {code}); see {service.log_path}")
                    service.process = None
                    continue
                service.restarts.append(now)
                self.say(f"{service.name} exited with {code}; starting it again")
                service.start()

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.server.stop()


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

