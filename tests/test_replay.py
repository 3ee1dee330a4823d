"""`casetrail replay`: a rebuild beside the live file, swapped in while the projector answers.

The tables are compared with a clean rebuild (`ProjectionStore.apply` over the log),
the oracle the crash tests use too.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import duckdb
import pytest

from benchmarks.workload import generate
from projections.store import ProjectionStore, versions_wanted
from services import replay
from services.client import Publisher
from services.log import read_log
from services.queries import QueryError
from services.settings import Settings
from tests.helpers import ROOT, event
from tests.test_projector import start_projector
from tests.test_projector_crash import tables as projection_tables


def tables(path: Path) -> dict[str, list]:
    """Every table of the projection file, its checkpoint and the versions it was built with."""
    found = projection_tables(path)
    con = duckdb.connect(str(path), read_only=True)
    try:
        found["versions"] = con.execute("SELECT * FROM projection_versions ORDER BY ALL").fetchall()
        return found
    finally:
        con.close()


async def clean(nc, path: Path, to_seq: int) -> dict[str, list]:
    store = ProjectionStore(path)
    async for batch in read_log(nc.jetstream(), 1, to_seq):
        await asyncio.to_thread(store.apply, batch)
    store.close()
    return tables(path)


async def seeded(nc, events: int, seed: int = 3) -> tuple[list[dict], int]:
    workload = generate(events, seed=seed)
    results = await Publisher(nc, "bulk", batch_size=500).submit_many(workload)
    assert all(r.ok for r in results)
    return workload, max(r.seq for r in results)


async def casetrail(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )


async def test_replay_swaps_in_a_rebuild_equal_to_the_live_one_and_answers_throughout(
    nats_server, nc, recorder, spawn, tmp_path
) -> None:
    workload, last = await seeded(nc, 20_000)
    db = tmp_path / "projections" / "casetrail.duckdb"
    queries = await start_projector(spawn, nats_server, db, nc)
    case_id = workload[0]["case_id"]
    before = await queries.status(case_id, min_seq=last)
    inode = db.stat().st_ino

    proc = await casetrail("replay", "--json", "--nats", nats_server.url)
    states, answered, refused = [], 0, []
    while proc.returncode is None:
        try:
            status = await queries.status(case_id)
            assert {**status, "as_of_seq": 0} == {**before, "as_of_seq": 0}
            answered += 1
            states.append((await queries.admin("replay_status"))["state"])
        except QueryError as exc:
            refused.append(exc)
        try:
            await asyncio.wait_for(proc.wait(), 0.05)
        except TimeoutError:
            pass
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    done = json.loads(out)
    assert (done["state"], done["position"]) == ("done", last)
    assert refused == [] and answered > 20 and "building" in states

    # The projector goes on from the new file: a new event is applied to it.
    (new,) = await Publisher(nc, "memorial").submit_many(
        [event("released", case_id, "after-replay", "2026-11-30", reason="amnesty")]
    )
    assert (await queries.status(case_id, min_seq=new.seq))["custody"] == "at_liberty"
    await asyncio.to_thread(queries.process.stop)  # type: ignore[attr-defined]
    assert db.stat().st_ino != inode and not replay.rebuild_path(db).exists()
    assert tables(db) == await clean(nc, tmp_path / "clean.duckdb", new.seq)


async def test_an_interrupted_replay_leaves_the_live_file_and_goes_on_when_asked_again(
    nats_server, nc, recorder, spawn, tmp_path
) -> None:
    _, last = await seeded(nc, 20_000, seed=4)
    db = tmp_path / "projections" / "casetrail.duckdb"
    queries = await start_projector(spawn, nats_server, db, nc)
    await queries.stats(min_seq=last)
    status = await queries.admin("replay")
    async with asyncio.timeout(60):
        while not 0 < status["position"] < last:
            await asyncio.sleep(0.05)
            status = await queries.admin("replay_status")
    queries.process.kill()  # type: ignore[attr-defined]  # kill -9, mid-build
    partial = replay.rebuild_path(db)
    async with asyncio.timeout(30):  # the orphaned build notices and closes its file
        while True:
            try:
                at = replay._position_of(partial)
                break
            except duckdb.Error:
                await asyncio.sleep(0.2)
    assert 0 < at < last
    assert tables(db) == await clean(nc, tmp_path / "clean.duckdb", last)  # the live file is untouched

    queries = await start_projector(spawn, nats_server, db, nc)
    proc = await casetrail("replay", "--json", "--nats", nats_server.url)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0 and json.loads(out)["state"] == "done", err.decode()
    await asyncio.to_thread(queries.process.stop)  # type: ignore[attr-defined]
    assert tables(db) == tables(tmp_path / "clean.duckdb")


async def test_to_seq_builds_a_historical_copy_beside_the_live_file(nats_server, nc, recorder, spawn, tmp_path) -> None:
    _, last = await seeded(nc, 3_000, seed=6)
    db = tmp_path / "projections" / "casetrail.duckdb"
    queries = await start_projector(spawn, nats_server, db, nc)
    await queries.stats(min_seq=last)
    proc = await casetrail("replay", "--to-seq", "1200", "--json", "--nats", nats_server.url)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["path"] == str(db.with_name("casetrail.seq-1200.duckdb"))
    assert (await queries.stats())["as_of_seq"] == last  # the live projection is where it was
    assert tables(db.with_name("casetrail.seq-1200.duckdb")) == await clean(nc, tmp_path / "clean.duckdb", 1200)

    proc = await casetrail("replay", "--to-seq", str(last + 10), "--nats", nats_server.url)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and b"to_seq" in err
    proc = await casetrail("replay", "--projection", "nonsense", "--nats", nats_server.url)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and b"case_status" in err


async def test_a_file_of_another_projection_version_is_rebuilt_on_start(nats_server, nc, recorder, spawn, tmp_path) -> None:
    _, last = await seeded(nc, 3_000, seed=8)
    db = tmp_path / "projections" / "casetrail.duckdb"
    queries = await start_projector(spawn, nats_server, db, nc)
    await queries.stats(min_seq=last)
    await asyncio.to_thread(queries.process.stop)  # type: ignore[attr-defined]
    con = duckdb.connect(str(db))
    con.execute("UPDATE projection_versions SET version = version - 1 WHERE projection = 'charges'")
    con.execute("DELETE FROM charges")  # what the older code wrote differs
    con.close()

    queries = await start_projector(spawn, nats_server, db, nc)
    assert (await queries.stats(min_seq=last))["as_of_seq"] == last
    await asyncio.to_thread(queries.process.stop)  # type: ignore[attr-defined]
    rebuilt = tables(db)
    assert dict(rebuilt["versions"]) == versions_wanted()
    assert rebuilt == await clean(nc, tmp_path / "clean.duckdb", last)


async def test_build_resumes_a_partial_file_for_the_benchmark_harness(nats_server, nc, recorder, tmp_path) -> None:
    _, last = await seeded(nc, 3_000, seed=9)
    settings = Settings(nats_url=nats_server.url)
    path = tmp_path / "replayed.duckdb"
    first = await replay.build(settings, path, to_seq=1000)
    assert (first.position, first.applied) == (1000, 1000)
    rest = await replay.build(settings, path)
    assert (rest.position, rest.applied) == (last, last - 1000) and rest.events_per_s > 0
    assert tables(path) == await clean(nc, tmp_path / "clean.duckdb", last)
    with pytest.raises(ValueError):
        await replay.build(settings, path, to_seq=10)
    os.remove(path)
