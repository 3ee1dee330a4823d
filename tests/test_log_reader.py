"""The log reader's connection: record headers left unparsed, status messages still parsed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
import pytest

from services import logfeed, subjects
from services.connection import connect
from services.log import LogReader, headers_for_status_only
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
    """Far behind: windows of 100 in whole batches (the next window read while one is handed on); then the head."""
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
    sizes: list[int] = []
    enough = asyncio.Event()

    async def hand_on(batch: logfeed.Batch, head: bool) -> None:
        assert len(batch) <= 40
        got.extend(batch)
        at_head.append(head)
        sizes.append(len(batch))
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
    # Each batch far behind costs the projector a commit: none is handed on part-filled
    # (but the first, which goes as soon as anything has arrived).
    behind = [size for size, head in zip(sizes, at_head) if not head]
    in_first_window = next(n for n in range(1, len(behind) + 1) if sum(behind[:n]) == 100)
    assert behind[1:in_first_window] == [40] * (in_first_window - 2) + [(100 - behind[0]) % 40 or 40]
    # The last window ends short of the head: seq 1000 comes by following it.
    assert behind[in_first_window:] == [40, 40, 20] * 8 + [40, 40, 19]
    assert sum(behind) == 999 and all(at_head[len(behind) :])


async def _publish(js: Any, first: int, count: int) -> None:
    acks = [
        await js.publish_async(subjects.log(f"case-{n % 7}"), str(n).encode(), headers={"Nats-Msg-Id": f"e-{n}"})
        for n in range(first, first + count)
    ]
    for ack in acks:
        await ack


async def test_the_child_feed_gathers_what_arrives_at_the_head_and_reads_on_when_it_falls_behind(
    nc: nats.NATS, streams: None, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`batches()` catches up; following the head, `take()` hands on what arrived since
    it was last called as one batch (several frames over the pipe); a burst larger than a batch sends the reader back
    to windows (`take()` says so), and `batches()` reads on from there: every record
    once, in order. Closing the feed releases a `take()` that waits."""
    monkeypatch.setattr(logfeed, "MAX_BATCH", 40)
    js = nc.jetstream()
    await _publish(js, 1, 300)
    loop = asyncio.get_running_loop()
    got: list[tuple[int, bytes]] = []

    async def take() -> tuple[logfeed.Batch, bool]:
        taken = await loop.run_in_executor(None, feed.take)
        assert taken is not None
        got.extend(taken[0])
        return taken

    async def batches_until(last: int) -> None:
        async for batch in feed.batches():
            got.extend(batch)
            if got[-1][0] >= last:
                return

    feed = logfeed.ChildFeed(settings, 1, window=100)
    async with asyncio.timeout(60):
        async with feed:
            await batches_until(300)  # the last window: the next batch follows the head
            await _publish(js, 301, 1)
            await batches_until(301)
            assert feed.at_head
            await _publish(js, 302, 3)
            batch, at_head = await take()
            assert at_head and [seq for seq, _ in batch] == [302, 303, 304]
            for first, count in ((305, 3), (308, 2)):  # while nobody takes
                await _publish(js, first, count)
                await asyncio.sleep(0.3)
            batch, at_head = await take()
            assert at_head and [seq for seq, _ in batch] == list(range(305, 310))

            await _publish(js, 310, 150)  # more than a batch: behind the head
            heads = []
            while not heads or heads[-1]:
                batch, at_head = await take()
                assert len(batch) <= 40
                heads.append(at_head)
            await batches_until(459)
            await _publish(js, 460, 1)
            await batches_until(460)
            assert feed.at_head
            waiting = loop.run_in_executor(None, feed.take)
        assert await waiting is None
    assert [seq for seq, _ in got] == list(range(1, 461))
    assert [int(data) for _, data in got] == list(range(1, 461))


class _Delivered:
    """What `LogReader` reads of a message: its ack subject (for the seq) and its data."""

    def __init__(self, seq: int) -> None:
        self.reply = f"$JS.ACK.CASETRAIL_LOG.reader.{seq}.{seq}.1.0.0"
        self.data = str(seq).encode()


async def test_a_bounded_reader_hands_on_whole_batches_then_its_last_records() -> None:
    reader = LogReader(None, start_seq=1, stop_seq=50)  # type: ignore[arg-type]  # fed by hand below
    for seq in range(1, 11):
        await reader._on_msg(_Delivered(seq))  # type: ignore[arg-type]
    partial = await reader.take(20)
    assert [seq for seq, _ in partial] == list(range(1, 11))  # what has arrived, by default
    taking = asyncio.create_task(reader.take(20, full=True))
    for seq in range(11, 31):
        await asyncio.sleep(0.01)
        assert not taking.done()  # still short of a whole batch
        await reader._on_msg(_Delivered(seq))  # type: ignore[arg-type]
    assert [seq for seq, _ in await taking] == list(range(11, 31))
    taking = asyncio.create_task(reader.take(40, full=True))
    for seq in range(31, 51):
        await reader._on_msg(_Delivered(seq))  # type: ignore[arg-type]
    # Short of 40, but the reader's last record has come: nothing more will.
    assert [seq for seq, _ in await asyncio.wait_for(taking, 5)] == list(range(31, 51))
    assert await reader.take(40, full=True) is None
