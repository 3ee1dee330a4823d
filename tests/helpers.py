"""Helpers the tests share: child services, waiting for a recorder, building events."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import nats

from services.children import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
SOURCE = [{"publisher": "OVD-Info", "url": "https://ovd.info/", "reliability": "credible"}]


class ServiceProcess:
    """`casetrail serve <name>` as a child process, for kill -9 tests."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.args = args
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services", "serve", self.name, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                cwd=ROOT,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 (pytest killed: it goes too)
            )
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def wait_for_recorder(nc: nats.NATS, timeout: float = 30.0) -> None:
    """Until some recorder answers on intake (an empty batch records nothing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await nc.request("casetrail.intake.probe", b'{"events":[]}', timeout=1)
            return
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def read_until_up(stream: asyncio.StreamReader, timeout: float = 120.0) -> bytes:
    """What `casetrail up` printed up to its "casetrail is up" line (it fails if it ends first)."""
    seen = b""
    async with asyncio.timeout(timeout):
        while b"casetrail is up" not in seen:
            line = await stream.readline()
            assert line, seen.decode()
            seen += line
    return seen


def today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def event(type_: str, case_id: str, event_id: str, occurred_on: str = "2022-03-16", **fields: Any) -> dict:
    """A valid event of `type_` (give the type's required fields in `fields`)."""
    return {
        "type": type_,
        "event_id": event_id,
        "case_id": case_id,
        "occurred_on": occurred_on,
        "sources": SOURCE,
        **fields,
    }


def opened(case_id: str, event_id: str | None = None, **fields: Any) -> dict:
    return event(
        "case_opened",
        case_id,
        event_id or f"{case_id}-opened",
        person={"name": f"Person {case_id}"},
        jurisdiction="RU",
        **fields,
    )


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)
