"""Ingest: events per second through the recorder, next to what nats-py alone reaches.

- `recorder`: the publisher client submitting batches to recorders, which validate,
  chain and append with durable acks (JetStream atomic batches).
- `ceiling_publish_async`: nats-py publishing the same payloads to a JetStream
  stream one by one with `publish_async`, every ack awaited.
- `ceiling_atomic`: the same payloads as JetStream atomic batches of 500.

All three run against the same server in the same run.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid

import nats
from nats.js.api import StorageType, StreamConfig

from services.client import Publisher, prepare

CEILING_STREAM = "BENCH_CEILING"


async def _fresh_stream(js, name: str) -> None:
    try:
        await js.delete_stream(name)
    except Exception:
        pass
    await js.add_stream(
        StreamConfig(name=name, subjects=["bench.>"], storage=StorageType.FILE, allow_atomic=True)
    )


async def ceiling_publish_async(url: str, events: list[dict], payloads: list[bytes]) -> float:
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    js = nc.jetstream()
    await _fresh_stream(js, CEILING_STREAM)
    started = time.perf_counter()
    futures = []
    for event, payload in zip(events, payloads):
        futures.append(
            await js.publish_async(
                f"bench.{event['case_id']}", payload, headers={"Nats-Msg-Id": event["event_id"]}
            )
        )
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    await js.delete_stream(CEILING_STREAM)
    await nc.close()
    return len(payloads) / elapsed


async def ceiling_atomic(url: str, events: list[dict], payloads: list[bytes], size: int = 500) -> float:
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    js = nc.jetstream()
    await _fresh_stream(js, CEILING_STREAM)
    started = time.perf_counter()
    for start in range(0, len(payloads), size):
        batch_id = uuid.uuid4().hex
        chunk = list(zip(events[start : start + size], payloads[start : start + size]))
        for n, (event, payload) in enumerate(chunk, 1):
            headers = {
                "Nats-Msg-Id": event["event_id"],
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(n),
            }
            subject = f"bench.{event['case_id']}"
            if n < len(chunk):
                await nc.publish(subject, payload, headers=headers)
            else:
                headers["Nats-Batch-Commit"] = "1"
                reply = await nc.request(subject, payload, headers=headers, timeout=30)
                assert b'"error"' not in reply.data, reply.data
    elapsed = time.perf_counter() - started
    await js.delete_stream(CEILING_STREAM)
    await nc.close()
    return len(payloads) / elapsed


async def recorder(url: str, payloads: list[bytes], batch_size: int = 500, in_flight: int = 8) -> float:
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    publisher = Publisher(nc, "bench", timeout=60, batch_size=batch_size, in_flight=in_flight)
    prepared = [prepare(p) for p in payloads]
    gc.freeze()  # long-lived: not for the collector to rescan while the clock runs
    started = time.perf_counter()
    results = await publisher.submit_many(prepared)
    elapsed = time.perf_counter() - started
    await nc.close()
    refused = [r for r in results if r.status == "rejected"]
    if refused:
        raise AssertionError(f"{len(refused)} events refused, first: {refused[0]}")
    return len(payloads) / elapsed
