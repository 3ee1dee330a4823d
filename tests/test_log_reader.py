"""The log reader's connection: record headers left unparsed, status messages still parsed."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import pytest

from services import logfeed, subjects
from services.log import LogReader, headers_for_status_only
from services.connection import connect
from services.settings import Settings

HEARTBEAT = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 5\r\nNats-Last-Stream: 7\r\n\r\n"
FLOW_CONTROL = b"NATS/1.0 100 FlowControl Request\r\n\r\n"
RECORD = b"NATS/1.0\r\nNats-Msg-Id: e-1\r\nNats-Batch-Id: b\r\nNats-Batch-Sequence: 1\r\n\r\n"


async def test_status_messages_are_parsed_and_record_headers_are_not(nc: nats.NATS) -> None:
    headers_for_status_only(nc)
    heartbeat = await nc._process_headers(HEARTBEAT)
    assert heartbeat is not None
    assert heartbeat["Status"] == "100"
    assert heartbeat["Description"] == "Idle Heartbeat"
    assert heartbeat["Nats-Last-Stream"] == "7"
    flow = await nc._process_headers(FLOW_CONTROL)
    assert flow is not None and flow["Description"] == "FlowControl Request"
    assert await nc._process_headers(RECORD) is None
    assert await nc._process_headers(b"") is None


async def test_a_reader_connection_reads_every_record_in_order(
    nc: nats.NATS, streams: None, settings: Settings
) -> None:
    """Enough records with headers that the server sends flow control on the way."""
    js = nc.jetstream()
    body = b"x" * 2000
    total = 6000
    for start in range(0, total, 500):
        acks = [
            await js.publish_async(
                subjects.log(f"case-{n % 50}"), body + str(n).encode(), headers={"Nats-Msg-Id": f"e-{n}"}
            )
            for n in range(start, start + 500)
        ]
        for ack in acks:
            await ack
    reader_nc = await connect(settings, "test-log-reader")
    try:
        headers_for_status_only(reader_nc)
        seen: list[tuple[int, bytes]] = []
        # Unanswered flow control would stall the consumer: bounded, to fail rather than hang.
        async with asyncio.timeout(60), LogReader(reader_nc.jetstream(), 1, total) as reader:
            async for batch in reader.batches(max_batch=700):
                seen.extend(batch)
        assert [seq for seq, _ in seen] == list(range(1, total + 1))
        assert [data for _, data in seen] == [body + str(n).encode() for n in range(total)]
    finally:
        await reader_nc.close()


async def test_follow_hands_on_every_record_once_across_windows_then_follows_the_head(
    nc: nats.NATS, streams: None, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Far behind: windows of 100 (the next one read while one is handed on); then the head."""
    monkeypatch.setattr(logfeed, "MAX_BATCH", 40)
    js = nc.jetstream()

    async def publish(first: int, count: int) -> None:
        acks = [
            await js.publish_async(subjects.log(f"case-{n % 7}"), str(n).encode(), headers={"Nats-Msg-Id": f"e-{n}"})
            for n in range(first, first + count)
        ]
        for ack in acks:
            await ack

    await publish(1, 1000)
    got: list[tuple[int, bytes]] = []
    at_head: list[bool] = []
    enough = asyncio.Event()

    async def hand_on(batch: logfeed.Batch, head: bool) -> None:
        assert len(batch) <= 40
        got.extend(batch)
        at_head.append(head)
        if len(got) >= 1010:
            enough.set()

    async def asked() -> None:
        await asyncio.sleep(0)  # the projector asks at once

    reader_nc = await connect(settings, "test-follow")
    following = asyncio.create_task(logfeed.follow(reader_nc, 1, hand_on, asked, window=100))
    try:
        async with asyncio.timeout(60):
            while len(got) < 1000:
                await asyncio.sleep(0.01)
            await publish(1001, 10)  # appended while it follows the head
            await enough.wait()
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await reader_nc.close()
    assert [seq for seq, _ in got] == list(range(1, 1011))
    assert [int(data) for _, data in got] == list(range(1, 1011))
    assert not at_head[0] and at_head[-1]
