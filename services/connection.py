"""Connecting to NATS the same way everywhere: names, reconnects, quiet callbacks."""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client

from services.settings import Settings

log = logging.getLogger("casetrail.nats")


async def _log_error(exc: Exception) -> None:
    log.warning("nats: %s", exc)


async def connect(settings: Settings, name: str, **options: object) -> Client:
    """A client that reconnects for ever and reports errors to logging, not stdout."""
    defaults: dict[str, object] = dict(
        name=name,
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        error_cb=_log_error,
        pending_size=64 * 1024 * 1024,
    )
    defaults.update(options)
    return await nats.connect(settings.nats_url, **defaults)  # type: ignore[arg-type]


async def quiet(exc: Exception) -> None:
    """An error callback for probes that expect to fail."""


async def close_connection(nc: Client, timeout: float = 5.0) -> None:
    """Drain (deliver what is pending), but never wait for ever on a dead server."""
    if nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except Exception:  # timed out, or the connection broke while draining
        await nc.close()
