"""The projector against a real nats-server: what a user asks, what the log says.

The sample case is checked field by field against the Memorial statement
(../shared/seeds/klokov-statement.txt): detained and charged on 16 March 2022
under Art. 207.3 Part 2 points a, b, e (up to 10 years), remanded in custody by
Moscow's Presnensky district court on 18 March 2022, recognised as a political
prisoner by Memorial on 17 May 2022.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import nats
import pytest

from services.client import Publisher
from services.queries import QueryClient, QueryError
from tests.helpers import ROOT, event, opened, read_until_up

CASE = "ru-2022-klokov"
STATEMENT_PUBLISHER = "Support for Political Prisoners. Memorial"


def today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


async def start_projector(spawn, nats_server, db: Path, nc) -> QueryClient:
    """`casetrail serve projector` in a child process; returns once it answers."""
    queries = QueryClient(nc, timeout=15)
    queries.process = spawn("projector", "--db", str(db), "--nats", nats_server.url)  # type: ignore[attr-defined]
    async with asyncio.timeout(60):
        while True:
            try:
                await queries.stats()
                return queries
            except QueryError:
                await asyncio.sleep(0.1)


def casetrail(nats_server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args, "--nats", nats_server.url],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )


async def submit(nc, events: list[dict], publisher: str = "memorial") -> list:
    results = await Publisher(nc, publisher).submit_many(events)
    assert all(r.status == "accepted" for r in results), results
    return results


async def test_the_sample_case_reads_as_the_statement_says(
    nats_server, nc, recorder, spawn, tmp_path, sample_lines
) -> None:
    results = await Publisher(nc, "memorial").submit_many(sample_lines)
    last = max(r.seq for r in results)
    queries = await start_projector(spawn, nats_server, tmp_path / "p.duckdb", nc)

    status = await queries.status(CASE, min_seq=last)
    assert status["name"] == "Sergei Klokov"
    assert status["custody"] == "in_custody"  # remanded in custody on 18 March 2022
    assert status["custody_since"] == "2022-03-16"  # the spell began with the detention
    assert status["stage"] == "investigation"  # charged; no trial yet
    assert status["charges"] == ["RU-CC 207.3(2)(a,b,e)"]  # Art. 207.3, Part 2, Points a, b, e
    assert status["recognized_by"] == ["Memorial"]
    assert status["sentence"] is None
    assert status["last_event_on"] == "2022-05-17"
    assert status["events"] == 5
    assert status["days_in_custody"] == (today() - dt.date(2022, 3, 16)).days
    assert status["as_of_seq"] >= last

    # On the day of the statement he had spent 62 days in custody.
    on_statement = await queries.status(CASE, on="2022-05-17")
    assert on_statement["days_in_custody"] == 62
    # Before Memorial's statement: detained, charged, remanded; not yet recognised.
    before = await queries.status(CASE, on="2022-03-18")
    assert (before["custody"], before["recognized_by"], before["events"]) == ("in_custody", [], 4)
    with pytest.raises(QueryError) as refused:
        await queries.status(CASE, on="2022-03-15")  # before anything happened
    assert refused.value.code == "not_found"

    timeline = (await queries.timeline(CASE))["timeline"]
    assert [e["type"] for e in timeline] == ["case_opened", "detained", "charged", "remanded", "recognized"]
    assert [e["occurred_on"] for e in timeline] == ["2022-03-16"] * 3 + ["2022-03-18", "2022-05-17"]
    assert timeline[2]["summary"] == "Charged under RU-CC 207.3(2)(a,b,e)"
    assert timeline[3]["summary"] == "Remanded in custody by Presnensky District Court, Moscow"
    assert timeline[4]["summary"] == "Recognised as a political prisoner by Memorial"
    assert all(e["sources"][0]["publisher"] == STATEMENT_PUBLISHER for e in timeline)
    assert not any(e["corrected"] for e in timeline)

    listed = await queries.cases(custody="in_custody", recognized_by="Memorial", article="207.3")
    assert [c["case_id"] for c in listed["cases"]] == [CASE] and listed["total"] == 1
    assert (await queries.cases(article="RU-CC 280.3"))["total"] == 0


async def test_the_cli_shows_the_sample_case(nats_server, nc, recorder, spawn, tmp_path, sample_lines) -> None:
    results = await Publisher(nc, "memorial").submit_many(sample_lines)
    queries = await start_projector(spawn, nats_server, tmp_path / "p.duckdb", nc)
    await queries.status(CASE, min_seq=max(r.seq for r in results))

    shown = await asyncio.to_thread(casetrail, nats_server, "query", "status", CASE)
    assert shown.returncode == 0, shown.stderr
    for text in ("in_custody", "RU-CC 207.3(2)(a,b,e)", "Memorial", "Sergei Klokov", "2022-03-16"):
        assert text in shown.stdout

    as_json = await asyncio.to_thread(casetrail, nats_server, "query", "status", CASE, "--json")
    status = json.loads(as_json.stdout)
    assert list(status) == [
        "case_id", "name", "custody", "stage", "charges", "recognized_by", "custody_since",
        "days_in_custody", "sentence", "last_event_on", "events", "as_of_seq",
    ]
    timeline = json.loads((await asyncio.to_thread(casetrail, nats_server, "query", "timeline", CASE, "--json")).stdout)
    assert [set(e) for e in timeline] == [
        {"seq", "event_id", "type", "occurred_on", "circa", "summary", "sources", "recorded_at", "corrected"}
    ] * 5
    cases = json.loads(
        (await asyncio.to_thread(casetrail, nats_server, "query", "cases", "--custody", "in_custody", "--json")).stdout
    )
    assert [c["case_id"] for c in cases] == [CASE]

    missing = await asyncio.to_thread(casetrail, nats_server, "query", "status", "ru-2099-nobody")
    assert missing.returncode == 1 and "ru-2099-nobody" in missing.stderr


async def test_a_write_is_seen_by_a_query_with_its_seq(nats_server, nc, recorder, spawn, tmp_path) -> None:
    queries = await start_projector(spawn, nats_server, tmp_path / "p.duckdb", nc)
    publisher = Publisher(nc, "ovd-info")
    day = today().isoformat()
    for n in range(25):
        case_id = f"ryw-{n}"
        (result,) = await publisher.submit_many([opened(case_id, occurred_on=day)])
        status = await queries.status(case_id, min_seq=result.seq)
        assert status["as_of_seq"] >= result.seq and status["custody"] == "at_liberty"
        (result,) = await publisher.submit_many([event("detained", case_id, f"{case_id}-d", day)])
        status = await queries.status(case_id, min_seq=result.seq)
        assert (status["custody"], status["events"]) == ("in_custody", 2)


async def test_min_seq_beyond_the_log_is_refused_after_a_bounded_wait(
    nats_server, nc, recorder, spawn, tmp_path
) -> None:
    queries = await start_projector(spawn, nats_server, tmp_path / "p.duckdb", nc)
    started = asyncio.get_running_loop().time()
    with pytest.raises(QueryError) as refused:
        await queries.stats(min_seq=10**9, wait_s=0.5)
    assert refused.value.code == "not_caught_up" and "10" in refused.value.message
    assert 0.5 <= asyncio.get_running_loop().time() - started < 5


async def test_known_at_before_a_correction_gives_the_old_answer(
    nats_server, nc, recorder, spawn, tmp_path
) -> None:
    case_id = "ru-2023-corrected"
    await submit(nc, [
        opened(case_id, occurred_on="2023-04-01"),
        event("remanded", case_id, "remand-1", "2023-04-03", measure="custody", court="Basmanny District Court"),
    ])
    queries = await start_projector(spawn, nats_server, tmp_path / "p.duckdb", nc)
    await asyncio.sleep(0.01)  # recording times are microseconds: keep the correction clearly later
    replacement = {k: v for k, v in event(
        "remanded", case_id, "x", "2023-04-03", measure="house_arrest", court="Basmanny District Court"
    ).items() if k != "event_id"}
    (fix,) = await submit(nc, [event(
        "event_corrected", case_id, "remand-1-fix", "2023-05-01", target_event_id="remand-1",
        replacement=replacement,
    )])
    now = await queries.status(case_id, min_seq=fix.seq)
    assert now["custody"] == "house_arrest"

    history = (await queries.timeline(case_id, history=True))["timeline"]
    original, correction = history[1], history[2]
    assert (original["state"], correction["state"]) == ("superseded", "effective")
    before = await queries.status(case_id, known_at=original["recorded_at"])
    after = await queries.status(case_id, known_at=correction["recorded_at"])
    assert before["custody"] == "in_custody" and after["custody"] == "house_arrest"

    shown = (await queries.timeline(case_id))["timeline"]
    assert [e["corrected"] for e in shown] == [False, True]
    assert shown[1]["summary"] == "Remanded to house arrest by Basmanny District Court"
    assert shown[1]["seq"] == original["seq"]  # a correction keeps the seq of what it corrects
    old = (await queries.timeline(case_id, known_at=original["recorded_at"]))["timeline"]
    assert old[1]["summary"] == "Remanded in custody by Basmanny District Court" and not old[1]["corrected"]
    past = await queries.cases(custody="in_custody", known_at=original["recorded_at"])
    assert [c["case_id"] for c in past["cases"]] == [case_id]
    assert (await queries.cases(custody="in_custody"))["total"] == 0


async def test_late_facts_and_a_retraction_give_the_status_of_events_md(
    nats_server, nc, recorder, spawn, tmp_path
) -> None:
    case_id = "by-2021-late"
    queries = await start_projector(spawn, nats_server, tmp_path / "p.duckdb", nc)
    await submit(nc, [
        opened(case_id, occurred_on="2021-05-20"),
        event("remanded", case_id, "r", "2021-05-22", measure="custody"),
        event("died", case_id, "d", "2021-09-01", in_custody=True),
    ])
    # Reported late: the detention happened before the remand; a release "after" death.
    (last,) = (await submit(nc, [
        event("detained", case_id, "late-detention", "2021-05-18"),
    ]))[-1:]
    status = await queries.status(case_id, min_seq=last.seq)
    assert status["custody"] == "deceased"
    assert status["days_in_custody"] == (dt.date(2021, 9, 1) - dt.date(2021, 5, 18)).days
    assert status["last_event_on"] == "2021-09-01" and status["events"] == 4
    (gone,) = await submit(nc, [event(
        "event_retracted", case_id, "no-death", "2021-10-01", target_event_id="d", reason="misreported",
    )])
    status = await queries.status(case_id, min_seq=gone.seq)
    assert (status["custody"], status["custody_since"], status["events"]) == ("in_custody", "2021-05-18", 3)
    (release,) = await submit(nc, [event("released", case_id, "out", "2021-12-24", reason="sentence_served")])
    status = await queries.status(case_id, min_seq=release.seq)
    assert (status["custody"], status["stage"]) == ("at_liberty", "closed")
    assert status["days_in_custody"] == (dt.date(2021, 12, 24) - dt.date(2021, 5, 18)).days


def _tables(path: Path) -> dict[str, list]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {
            name: con.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall()
            for name in ("case_status", "timeline", "charges", "recognitions")
        } | {"checkpoint": con.execute("SELECT last_seq FROM checkpoint").fetchall()}
    finally:
        con.close()


async def test_a_projection_rebuilt_from_the_log_equals_the_live_one(
    nats_server, nc, recorder, spawn, tmp_path
) -> None:
    from benchmarks.workload import generate

    live = await start_projector(spawn, nats_server, tmp_path / "live.duckdb", nc)
    events = generate(3000, seed=5)
    results = await Publisher(nc, "bulk", batch_size=200).submit_many(events)
    assert all(r.ok for r in results)
    last = max(r.seq for r in results)
    stats = await live.stats(min_seq=last)
    assert stats["records"] == last and stats["cases"] == len({e["case_id"] for e in events})
    # Projectors share the query subjects (a queue group): one at a time, so each
    # question reaches the one meant. SIGTERM commits the batch in hand.
    await asyncio.to_thread(live.process.stop)  # type: ignore[attr-defined]
    rebuilt = await start_projector(spawn, nats_server, tmp_path / "rebuilt.duckdb", nc)
    await rebuilt.stats(min_seq=last)
    await asyncio.to_thread(rebuilt.process.stop)  # type: ignore[attr-defined]
    assert _tables(tmp_path / "live.duckdb") == _tables(tmp_path / "rebuilt.duckdb")


async def test_catching_up_far_behind_commits_batches_together_and_equals_a_rebuild(
    nats_server, nc, recorder, settings, tmp_path, monkeypatch
) -> None:
    """Far behind the head, batches are held until their transaction has HOLD_ROWS timeline
    rows (a DuckDB row group; 300 here, in batches of 100): fewer commits, the same
    projection. Stopped midway, what it holds is committed, and a restart goes on from there."""
    from benchmarks.workload import generate
    from projections import store as store_module
    from services import logfeed
    from services.projector import Projector
    from tests.faults import assert_projection_is_a_clean_rebuild, log_contents

    monkeypatch.setattr(logfeed, "MAX_BATCH", 100)
    monkeypatch.setattr(logfeed, "WINDOW", 200)
    monkeypatch.setattr(store_module, "HOLD_ROWS", 300)
    events = generate(4000, seed=9)  # late reports, corrections and retractions among them
    results = await Publisher(nc, "bulk", batch_size=500).submit_many(events)
    assert all(r.ok for r in results)
    raw = await log_contents(nc)
    db = tmp_path / "p.duckdb"
    committed: list[int] = []

    async def catch_up(until: int) -> int:
        projector = Projector(settings, db)
        track = projector._committed

        def tracking(position: int) -> None:
            committed.append(position)
            track(position)

        projector._committed = tracking  # type: ignore[method-assign]
        await projector.start()
        try:
            async with asyncio.timeout(120):
                while projector.position < until:
                    await asyncio.sleep(0.01)
        finally:
            await projector.stop()
        assert projector.store is not None
        return projector.store.position

    stopped_at = await catch_up(len(raw) // 2)
    assert len(raw) // 2 <= stopped_at < len(raw)
    assert await catch_up(len(raw)) == len(raw)
    # Batches of 100 committed three at a time (the first after each start alone).
    assert len(committed) <= len(raw) // 100 // 3 + 6, committed
    assert_projection_is_a_clean_rebuild(db, raw, tmp_path / "rebuild.duckdb")


async def test_following_the_head_a_burst_sends_it_back_to_catch_up_then_it_follows_again(
    nats_server, nc, recorder, settings, tmp_path, monkeypatch
) -> None:
    """At the head the writer thread commits what the reader took as it arrived; a
    submission larger than a batch puts the reader behind (windows again), and the
    projector catches up and follows the head again: the same projection as a rebuild,
    with queries answered all along."""
    from benchmarks.workload import generate
    from services import logfeed, runtime
    from services import projector as projector_module
    from services.projector import Projector
    from tests.faults import assert_projection_is_a_clean_rebuild, log_contents

    monkeypatch.setattr(logfeed, "MAX_BATCH", 50)
    monkeypatch.setattr(logfeed, "WINDOW", 100)
    # The collector's young threshold it asks for (not set here: this is the tests' process).
    young: list[int] = []
    monkeypatch.setattr(projector_module, "tune_gc", lambda threshold=runtime.YOUNG: young.append(threshold))
    events = generate(1500, seed=12)
    projector = Projector(settings, tmp_path / "p.duckdb")
    await projector.start()
    queries = QueryClient(nc, timeout=15)
    try:
        async with asyncio.timeout(120):
            for part in (events[:100], events[100:1400], events[1400:]):
                # In submissions of ten at the head; the middle one in submissions of 500.
                size = 500 if len(part) > 500 else 10
                results = await Publisher(nc, "bulk", batch_size=size).submit_many(part)
                assert all(r.ok for r in results)
                last = max(r.seq for r in results if r.seq is not None)
                await queries.stats(min_seq=last)  # visible once committed
                assert projector.position >= last
    finally:
        await projector.stop()
    assert_projection_is_a_clean_rebuild(tmp_path / "p.duckdb", await log_contents(nc), tmp_path / "rebuild.duckdb")
    # Young objects are left alone while it catches up, and collected as usual at the head.
    changes = [threshold for n, threshold in enumerate(young) if n == 0 or young[n - 1] != threshold]
    # ... it followed the head, fell behind, caught up and follows again.
    assert changes[-3:] == [runtime.YOUNG, runtime.YOUNG_CATCHING_UP, runtime.YOUNG]


async def test_at_the_head_a_status_is_answered_once_folded_before_its_commit_ends(
    nats_server, nc, recorder, settings, tmp_path, monkeypatch
) -> None:
    """Following the head, a batch's status rows are answered as soon as it is folded
    (its commit still going on); every other question waits for the commit."""
    import threading

    from projections.store import ProjectionStore
    from services.projector import Projector

    gate, blocked = threading.Event(), threading.Event()
    transaction = ProjectionStore._transaction

    def slow_transaction(store, held):
        if any(row[0].startswith("held-") for p in held.batches for row in p.status.rows):
            blocked.set()
            gate.wait(30)  # the commit of the batch below, held up until the test lets it go
        return transaction(store, held)

    monkeypatch.setattr(ProjectionStore, "_transaction", slow_transaction)
    projector = Projector(settings, tmp_path / "p.duckdb")
    await projector.start()
    queries = QueryClient(nc, timeout=15)
    publisher = Publisher(nc, "ovd-info")
    day = today().isoformat()
    try:
        (first,) = await publisher.submit_many([opened("free-1", occurred_on=day)])
        await queries.status("free-1", min_seq=first.seq)
        results = await publisher.submit_many(
            [opened("held-1", occurred_on=day), event("detained", "held-1", "held-1-d", day)]
        )
        last = max(r.seq for r in results)
        status = await queries.status("held-1", min_seq=last, wait_s=10)
        assert blocked.is_set() and projector.position < last  # its commit has not ended
        assert (status["custody"], status["events"], status["as_of_seq"]) == ("in_custody", 2, last)
        with pytest.raises(QueryError) as waited:
            await queries.timeline("held-1", min_seq=last, wait_s=0.5)
        assert waited.value.code == "not_caught_up"
        gate.set()
        timeline = await queries.timeline("held-1", min_seq=last, wait_s=10)
        assert [entry["type"] for entry in timeline["timeline"]] == ["case_opened", "detained"]
        assert await queries.status("held-1", min_seq=last) == status  # the row the commit wrote
    finally:
        gate.set()
        await projector.stop()


async def test_up_demo_answers_the_sample_case_status(tmp_path) -> None:
    from services.natsserver import free_port

    port, http_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", "up", "--data", str(tmp_path / "data"), "--port", str(port),
        "--http-port", str(http_port), "--demo", cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        seen = await read_until_up(proc.stderr)  # type: ignore[arg-type]
        # `up` reports the demo loaded only once the projector has applied it: no waiting here.
        assert b"in the projection" in seen
        url = f"nats://127.0.0.1:{port}"
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services", "query", "status", CASE, "--json", "--nats", url],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        status = json.loads(shown.stdout)
        assert status["custody"] == "in_custody"
        assert status["charges"] == ["RU-CC 207.3(2)(a,b,e)"]
        assert status["recognized_by"] == ["Memorial"]
        # The HTTP API runs too, at the address `up` printed.
        assert f"HTTP API http://127.0.0.1:{http_port}".encode() in seen
        from tests.test_api import get_json

        answered, case = await get_json(f"http://127.0.0.1:{http_port}/cases/{CASE}")
        assert answered == 200 and case == {**status, "as_of_seq": case["as_of_seq"]}
    finally:
        proc.send_signal(2)
        await asyncio.wait_for(proc.wait(), 60)


async def test_projector_stops_at_once_when_its_server_is_gone(nats_server, streams, spawn, tmp_path) -> None:
    """SIGTERM with NATS unreachable: no drain to wait for, exit 0 (not a hang, not an error)."""
    projector = spawn("projector", "--nats", nats_server.url, "--db", str(tmp_path / "p.duckdb"))
    nc = await nats.connect(nats_server.url)
    try:
        for _ in range(200):
            try:
                await QueryClient(nc, timeout=1).stats()
                break
            except QueryError:
                await asyncio.sleep(0.05)
    finally:
        await nc.close()
    nats_server.stop()
    await asyncio.sleep(3)  # reconnecting by now
    process = projector.process
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 20)
    assert code == 0
    assert time.monotonic() - started < 10
