"""Connecting to NATS the same way everywhere: names, reconnects, quiet callbacks."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import nats
from nats.aio.client import Client

from services.settings import Settings

log = logging.getLogger("casetrail.nats")

# A server that stops answering (frozen, cut off) is left after PING_INTERVAL_S *
# MAX_OUTSTANDING_PINGS seconds for another of the cluster; nats-py's default is minutes.
PING_INTERVAL_S = 5
MAX_OUTSTANDING_PINGS = 3


async def _log_error(exc: Exception) -> None:
    log.warning("nats: %s", exc)


def servers(settings: Settings) -> list[str]:
    """`nats_url` may list several servers (a cluster): `nats://a:4222,nats://b:4222`."""
    return [url.strip() for url in settings.nats_url.split(",") if url.strip()]


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A client TLS context trusting `tls_ca` (and presenting `tls_cert`), if configured."""
    if not (settings.tls_ca or settings.tls_cert):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca)
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def auth_options(settings: Settings) -> dict[str, object]:
    """How this process authenticates: its nkey seed and the inbox prefix its role allows."""
    if not settings.credentials:
        return {}
    from services.access import inbox_prefix, public_key

    try:
        seed = Path(settings.credentials).read_text().strip()
    except OSError as exc:
        raise OSError(f"cannot read credentials {settings.credentials}: {exc.strerror}") from None
    return {"nkeys_seed_str": seed, "inbox_prefix": inbox_prefix(public_key(seed))}


def broker_options(settings: Settings) -> dict[str, object]:
    """The same servers, credentials and TLS for a FastStream NatsBroker."""
    from faststream.nats.security import NatsNKey, NatsSecurity

    options: dict[str, object] = {
        "servers": servers(settings),
        "ping_interval": PING_INTERVAL_S,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
    }
    context = tls_context(settings)
    if settings.credentials:
        options["inbox_prefix"] = auth_options(settings)["inbox_prefix"]
        options["security"] = NatsNKey(settings.credentials, ssl_context=context)
    elif context is not None:
        options["security"] = NatsSecurity(ssl_context=context)
    return options


async def connect(settings: Settings, name: str, **options: object) -> Client:
    """A client that reconnects for ever and reports errors to logging, not stdout."""
    defaults: dict[str, object] = dict(
        name=name,
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        error_cb=_log_error,
        pending_size=64 * 1024 * 1024,
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        **auth_options(settings),
    )
    context = tls_context(settings)
    if context is not None:
        defaults["tls"] = context
    defaults.update(options)
    return await nats.connect(servers(settings), **defaults)  # type: ignore[arg-type]


async def quiet(exc: Exception) -> None:
    """An error callback for probes that expect to fail."""


async def close_connection(nc: Client, timeout: float = 5.0) -> None:
    """Drain (deliver what is pending), but never wait for ever on a dead server."""
    if nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except Exception:  # timed out, or the connection broke while draining
        try:
            await nc.close()
        except OSError:  # nats-py flushes a dead socket on close: nothing is left to send
            pass
