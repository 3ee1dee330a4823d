"""The log's guarantees under concurrency and crashes, with recorders as real processes."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import nats
import pytest

from schemas.record import decode_record, verify_chain
from services.client import Publisher
from services.log import read_log
from tests.helpers import event, opened, wait_for_recorder

CASE = "ru-2022-busy"


async def all_records(nc: nats.NATS):
    records = []
    async for chunk in read_log(nc.jetstream()):
        records += [decode_record(data, seq) for seq, data in chunk]
    return records


async def test_fifty_publishers_two_recorders_one_case(nats_server, nc, streams, spawn) -> None:
    for _ in range(2):
        spawn("recorder", "--nats", nats_server.url)
    await wait_for_recorder(nc)
    opener = Publisher(nc, "opener")
    assert (await opener.submit(opened(CASE))).status == "accepted"

    async def one(i: int):
        client = await nats.connect(nats_server.url)
        try:
            stale = {"expected_version": 1} if i % 2 else {}
            body = event("ill_treatment_reported", CASE, f"e{i:02d}", kind="threats", **stale)
            return i, await Publisher(client, f"pub{i:02d}").submit(body)
        finally:
            await client.close()

    outcomes = dict(await asyncio.gather(*(one(i) for i in range(50))))
    accepted = {i for i, r in outcomes.items() if r.status == "accepted"}
    refused = {i for i, r in outcomes.items() if r.status == "rejected"}
    assert set(range(0, 50, 2)) <= accepted  # no expected_version: all recorded
    assert len(accepted & set(range(1, 50, 2))) <= 1  # version 1 held for one at most
    assert {outcomes[i].code for i in refused} == {"version_conflict"}
    assert accepted | refused == set(range(50))

    records = await all_records(nc)
    ids = Counter(r.event.event_id for r in records)
    assert all(n == 1 for n in ids.values())
    assert {f"e{i:02d}" for i in accepted} == set(ids) - {f"{CASE}-opened"}
    assert [r.case_version for r in records] == list(range(1, len(records) + 1))
    assert list(verify_chain(records)) == []
    for i in accepted:  # each reply names the record that holds it
        record = next(r for r in records if r.event.event_id == f"e{i:02d}")
        assert (outcomes[i].seq, outcomes[i].case_version) == (record.seq, record.case_version)
        assert record.recorded_by == f"pub{i:02d}"


@pytest.mark.slow
async def test_kill_recorder_during_ingest_loses_and_doubles_nothing(
    nats_server, nc, streams, spawn
) -> None:
    """kill -9 the recorder mid-way through 20,000 events; the retrying client finishes."""
    recorder = spawn("recorder", "--nats", nats_server.url)
    await wait_for_recorder(nc)
    cases = [f"ru-2023-c{i:03d}" for i in range(200)]
    events = [opened(c) for c in cases]
    rng = random.Random(7)
    while len(events) < 20_000:
        case = rng.choice(cases)
        events.append(event("transferred", case, f"t{len(events):05d}", facility=f"SIZO-{rng.randint(1, 9)}"))
    publisher = Publisher(nc, "bulk", timeout=2.0, attempts=40, batch_size=250)
    ingest = asyncio.create_task(publisher.submit_many(events))

    killed = 0
    for _ in range(3):
        await asyncio.sleep(rng.uniform(0.3, 0.8))
        if ingest.done():
            break
        recorder.kill()
        killed += 1
        await asyncio.sleep(0.2)
        recorder = spawn("recorder", "--nats", nats_server.url)
    results = await asyncio.wait_for(ingest, timeout=240)
    assert killed >= 1, "the ingest finished before the recorder could be killed"

    assert {r.status for r in results} <= {"accepted", "duplicate"}
    records = await all_records(nc)
    ids = Counter(r.event.event_id for r in records)
    assert len(records) == 20_000
    assert set(ids) == {e["event_id"] for e in events} and max(ids.values()) == 1
    assert list(verify_chain(records)) == []
    by_id = {r.event.event_id: r.seq for r in records}
    assert all(r.seq == by_id[e["event_id"]] for r, e in zip(results, events))
