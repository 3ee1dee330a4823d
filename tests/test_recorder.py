"""The recorder against a real nats-server: rejections, case rules, dedup, idempotency."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats
import pytest

from schemas.record import decode_record, verify_chain
from services import subjects
from services.log import read_log
from services.natsserver import NatsServer
from services.recorder import RecorderService
from services.settings import Settings
from services.streams import ensure_streams
from tests.helpers import encode, event, opened

CASE = "ru-2022-test"


async def submit(nc: nats.NATS, body: bytes | dict, publisher: str = "ovd") -> list[dict]:
    raw = body if isinstance(body, bytes) else encode(body)
    reply = await nc.request(subjects.intake(publisher), raw, timeout=10)
    return msgspec.json.decode(reply.data)["results"]


async def batch(nc: nats.NATS, events: list[dict | bytes], publisher: str = "ovd") -> list[dict]:
    parts = [e if isinstance(e, bytes) else encode(e) for e in events]
    return await submit(nc, b'{"events":[' + b",".join(parts) + b"]}", publisher)


async def log_records(nc: nats.NATS):
    records = []
    async for chunk in read_log(nc.jetstream()):
        records += [decode_record(data, seq) for seq, data in chunk]
    return records


async def last_reject(nc: nats.NATS, code: str, publisher: str = "ovd"):
    return await nc.jetstream().get_last_msg(
        subjects.REJECTS_STREAM, subjects.rejects(code, publisher)
    )


async def test_sample_case_is_recorded_and_chained(nc, recorder, sample_lines) -> None:
    results = await batch(nc, sample_lines, publisher="memorial")
    assert [r["status"] for r in results] == ["accepted"] * 5
    assert [r["case_version"] for r in results] == [1, 2, 3, 4, 5]
    records = await log_records(nc)
    assert [r.seq for r in records] == [r["seq"] for r in results]
    assert {r.recorded_by for r in records} == {"memorial"}
    assert records[0].prev_hash == "0" * 64
    assert list(verify_chain(records)) == []


# One realistic bad submission per rejection code: the code, the message's field path,
# and the rejects stream holding the original bytes with code and message.
BAD = [
    ("malformed", lambda: b'{"type": "detained", "event_id": "e9", "case_id": ', "`$`"),
    ("schema", lambda: encode(event("detained", CASE, "e9", plaec="Moscow")), "plaec"),
    ("bad_id", lambda: encode(event("detained", "Ru 2022", "e9")), "$.case_id"),
    ("bad_date", lambda: encode(event("detained", CASE, "e9", "2022-02-30")), "$.occurred_on"),
    ("unknown_case", lambda: encode(event("detained", "ru-2022-nobody", "e9")), "$.case_id"),
    ("case_exists", lambda: encode(opened(CASE, "e9")), "$.case_id"),
    (
        "unknown_target",
        lambda: encode(event("event_retracted", CASE, "e9", target_event_id="nope", reason="r")),
        "$.target_event_id",
    ),
    (
        "version_conflict",
        lambda: encode(event("detained", CASE, "e9", expected_version=7)),
        "$.expected_version",
    ),
    (
        "event_id_conflict",
        lambda: encode(event("detained", CASE, "e-detained", "2022-03-20")),
        "$.event_id",
    ),
    ("too_large", lambda: encode(event("detained", CASE, "e9", note="x" * 66_000)), "`$`"),
]


@pytest.mark.parametrize("code, make, path", BAD, ids=[b[0] for b in BAD])
async def test_each_rejection_code_is_given_and_kept(nc, recorder, code, make, path) -> None:
    await batch(nc, [opened(CASE), event("detained", CASE, "e-detained")])
    raw = make()
    (result,) = await submit(nc, raw)
    assert (result["status"], result["code"]) == ("rejected", code), result
    assert path in result["message"]
    kept = await last_reject(nc, code)
    assert kept.data == raw
    assert kept.headers["Casetrail-Code"] == code
    assert path in kept.headers["Casetrail-Message"]
    assert kept.headers["Casetrail-Publisher"] == "ovd"
    assert len(await log_records(nc)) == 2  # nothing of it reached the log


async def test_a_bad_event_never_blocks_the_good_ones_of_its_batch(nc, recorder) -> None:
    results = await batch(
        nc,
        [
            opened(CASE),
            b'"an event, as a string"',
            event("detained", CASE, "e2", "2099-01-01"),
            event("detained", CASE, "e3"),
            event("event_corrected", CASE, "e4", target_event_id="e3", replacement={
                "type": "detained", "case_id": CASE, "occurred_on": "2022-03-17",
                "sources": [{"publisher": "Memorial"}]}),
            event("event_corrected", CASE, "e5", target_event_id="e4", replacement={
                "type": "detained", "case_id": CASE, "occurred_on": "2022-03-18",
                "sources": [{"publisher": "Memorial"}]}),
        ],
    )
    assert [(r["status"], r["code"]) for r in results] == [
        ("accepted", None),
        ("rejected", "malformed"),
        ("rejected", "bad_date"),
        ("accepted", None),
        ("accepted", None),
        ("rejected", "unknown_target"),  # a correction cannot be corrected
    ]
    assert [r["case_version"] for r in results if r["status"] == "accepted"] == [1, 2, 3]
    assert (await last_reject(nc, "malformed")).data == b'"an event, as a string"'



async def test_case_rules_in_order(nc, recorder) -> None:
    other = "ru-2022-other"
    await batch(nc, [opened(CASE), opened(other), event("detained", other, "o1")])
    # A correction may only target an event of the same case.
    (r,) = await submit(
        nc, event("event_retracted", CASE, "x1", target_event_id="o1", reason="wrong case")
    )
    assert r["code"] == "unknown_target"
    # A second case_opened is refused, even with the right expected_version.
    (r,) = await submit(nc, opened(CASE, "x2", expected_version=1))
    assert r["code"] == "case_exists"
    # expected_version counts every record of the case.
    (r,) = await submit(nc, event("detained", CASE, "x3", expected_version=1))
    assert (r["status"], r["case_version"]) == ("accepted", 2)
    (r,) = await submit(nc, event("detained", CASE, "x4", expected_version=1))
    assert r["code"] == "version_conflict" and "holds 2 events" in r["message"]
    (r,) = await submit(nc, opened("ru-2022-new", expected_version=0))
    assert r["status"] == "accepted"


async def test_oversized_batch_is_refused_whole(nc, recorder) -> None:
    events = [event("detained", CASE, f"e{i}") for i in range(1001)]
    results = await batch(nc, events)
    assert len(results) == 1001 and {r["code"] for r in results} == {"too_large"}
    assert "1,001 events" in results[0]["message"]


async def test_same_batch_three_times_is_stored_once(nc, recorder) -> None:
    events = [opened(CASE)] + [event("detained", CASE, f"e{i}", note=str(i)) for i in range(50)]
    first = await batch(nc, events)
    for _ in range(2):
        again = await batch(nc, events)
        assert {r["status"] for r in again} == {"duplicate"}
        assert [r["seq"] for r in again] == [r["seq"] for r in first]
        assert [r["case_version"] for r in again] == [r["case_version"] for r in first]
    assert len(await log_records(nc)) == 51


async def test_same_content_in_another_form_is_a_duplicate(nc, recorder) -> None:
    a = event("released", CASE, "r1", reason="parole")
    await batch(nc, [opened(CASE), a])
    reordered = dict(reversed(list({**a, "circa": False}.items())))
    (r,) = await submit(nc, reordered, publisher="someone-else")
    assert r["status"] == "duplicate"


async def test_idempotency_holds_beyond_the_window_and_across_restarts(tmp_path, spawn) -> None:
    """A reused id: after the 1 s duplicate window, a recorder restart and a server restart."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        await server.wait_ready()
        settings = Settings(nats_url=server.url, duplicate_window_s=1)
        nc = await nats.connect(server.url)
        await ensure_streams(nc.jetstream(), settings)
        service = RecorderService(settings)
        await service.start()
        original = event("detained", CASE, "e1", place="Moscow")
        first = await batch(nc, [opened(CASE), original])
        await service.stop()
        await nc.close()
        server.stop()
        await asyncio.sleep(1.5)  # past the duplicate window

        server.start()
        await server.wait_ready()
        nc = await nats.connect(server.url)
        service = RecorderService(settings)
        await service.start()
        try:
            (dup,) = await submit(nc, original)
            assert (dup["status"], dup["seq"]) == ("duplicate", first[1]["seq"])
            (conflict,) = await submit(nc, {**original, "place": "St Petersburg"})
            assert conflict["code"] == "event_id_conflict"
            assert len(await log_records(nc)) == 2
        finally:
            await service.stop()
            await nc.close()
    finally:
        server.stop()


async def test_checked_publish_path_records_the_same(nc, recorder, sample_lines, monkeypatch) -> None:
    """Without nats-py's internal command writer, batches go through the public publish."""
    from services import recording

    monkeypatch.setattr(recording, "PREBUILT_PUBLISH", False)
    results = await batch(nc, sample_lines)
    assert [r["case_version"] for r in results] == [1, 2, 3, 4, 5]
    assert list(verify_chain(await log_records(nc))) == []


async def test_an_event_another_recorder_just_wrote_is_a_duplicate_or_a_conflict(nc, streams) -> None:
    """Single events go as ordinary publishes: JetStream's duplicate ack must not pass for a record."""
    from services.recording import Recorder

    first, second, third = (Recorder(nc, nc.jetstream()) for _ in range(3))
    for each in (first, second, third):
        await each.start()
    other_case = "ru-2022-other"
    opened_results = [
        (await first.submit("ovd", encode(opened(case_id)))).results[0] for case_id in (CASE, other_case)
    ]
    for each in (second, third):
        await each.catch_up()
    detained = event("detained", CASE, "d1")
    (recorded,) = (await first.submit("ovd", encode(detained))).results
    assert recorded.status == "accepted"
    # The others have not read it yet: each learns of it from JetStream, reads, decides.
    (again,) = (await second.submit("someone-else", encode(detained))).results
    assert (again.status, again.seq) == ("duplicate", recorded.seq)
    # The same event_id in another case (whose head is current): only its Nats-Msg-Id
    # is known to JetStream, which acks it as a duplicate of the record in CASE.
    (reused,) = (await third.submit("ovd", encode({**detained, "case_id": other_case}))).results
    assert (reused.status, reused.code) == ("rejected", "event_id_conflict")
    assert [r.seq for r in await log_records(nc)] == [r.seq for r in opened_results] + [recorded.seq]


async def _batch_ids(nc: nats.NATS, seqs: list[int]) -> dict[int, str | None]:
    """The Nats-Batch-Id each record was appended with (None: an ordinary publish)."""
    js = nc.jetstream()
    out = {}
    for seq in seqs:
        msg = await js.get_msg(subjects.LOG_STREAM, seq=seq, direct=True)
        out[seq] = (msg.headers or {}).get("Nats-Batch-Id")
    return out


async def test_small_submissions_arriving_together_are_appended_as_one_group(nc, streams) -> None:
    """While one small submission is being appended, those decided meanwhile wait and go
    together as one atomic batch: each still gets its own seqs, in its own order."""
    from services.recording import Recorder

    recorder = Recorder(nc, nc.jetstream())
    await recorder.start()
    submissions = [
        [opened(f"ru-2022-g{n}"), event("detained", f"ru-2022-g{n}", f"g{n}-d")] for n in range(12)
    ]
    replies = await asyncio.gather(
        *(recorder.submit("ovd", b'{"events":[' + b",".join(map(encode, s)) + b"]}") for s in submissions)
    )
    records = {r.event.event_id: r for r in await log_records(nc)}
    assert len(records) == 24
    for events, reply in zip(submissions, replies):
        assert [r.status for r in reply.results] == ["accepted", "accepted"]
        assert [r.case_version for r in reply.results] == [1, 2]
        # The result's seq is where the log holds that very event.
        for sent, result in zip(events, reply.results):
            assert records[sent["event_id"]].seq == result.seq
    assert list(verify_chain(list(records.values()))) == []
    # The first went alone; the eleven decided while it was in flight, as one batch.
    batches = await _batch_ids(nc, [r.seq for r in records.values()])
    assert len(set(batches.values())) == 2


async def test_a_group_refused_for_one_stale_member_is_recorded_member_by_member(nc, streams, caplog) -> None:
    """One member of a group expects a case head that another recorder has moved on:
    JetStream refuses the whole batch; each member decides again and is appended alone."""
    from services.recording import Recorder

    ours, other = Recorder(nc, nc.jetstream()), Recorder(nc, nc.jetstream())
    await ours.start()
    await other.start()
    cases = [f"ru-2022-s{n}" for n in range(5)]
    for case_id in cases:
        await ours.submit("ovd", encode(opened(case_id)))
    await other.catch_up()
    (moved,) = (await other.submit("ovd", encode(event("detained", cases[3], "elsewhere")))).results
    ours._fresh_at = time.monotonic()  # its index is recent enough not to re-read: stale on cases[3]

    def body(n: int) -> bytes:
        case_id = cases[n]
        return b'{"events":[' + b",".join(
            encode(event("detained", case_id, f"{case_id}-{k}", place=place)) for k, place in enumerate(("Moscow", "Tver"))
        ) + b"]}"

    with caplog.at_level(logging.DEBUG, logger="casetrail.recorder"):
        replies = await asyncio.gather(*(ours.submit("ovd", body(n)) for n in range(5)))
    retried = [r.message for r in caplog.records if "append retried" in r.message]
    # The four decided while the first was in flight went as one group, which was refused.
    assert sum("the group's append failed" in m for m in retried) == 4
    assert [[r.status for r in reply.results] for reply in replies] == [["accepted"] * 2] * 5
    # The stale member follows the other recorder's record; the rest follow their opening.
    assert [r.case_version for r in replies[3].results] == [3, 4]
    assert all([r.case_version for r in replies[n].results] == [2, 3] for n in (0, 1, 2, 4))
    records = await log_records(nc)
    assert list(verify_chain(records)) == []
    assert {r.seq: r.event.event_id for r in records}[moved.seq] == "elsewhere"
    assert len(records) == 5 + 1 + 10
