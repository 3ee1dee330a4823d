"""What the fault tests share: a varied workload, a loopback cluster, and the checks a user makes.

The checks: every acknowledged event is in the log exactly once, where its reply said,
and the chain verifies; the projector's tables equal a clean rebuild from the log.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import urllib.request
from collections import Counter
from pathlib import Path

import duckdb
import nats

from projections.store import PROJECTIONS, ProjectionStore
from schemas.intake import SubmitResult
from schemas.record import Record, decode_record, verify_chain
from services import subjects
from services.log import read_log
from services.natsserver import NatsServer, free_port
from services.queries import QueryClient, QueryError
from tests.helpers import event, opened

# --- the workload ----------------------------------------------------------------------

CHARGE = {"code": "RU-CC", "article": "207.3", "part": "2", "points": ["a", "b", "e"]}


def workload(cases: int, total: int, seed: int) -> list[dict]:
    """`total` valid events over `cases` cases: each case opened first, then facts on
    random dates (so many arrive out of chronological order)."""
    rng = random.Random(seed)
    ids = [f"ru-{2020 + i % 5}-f{seed}-{i:04d}" for i in range(cases)]
    events = [opened(case) for case in ids]
    kinds = [
        lambda c, e, d: event("detained", c, e, d, place="Moscow", authority="FSB"),
        lambda c, e, d: event("charged", c, e, d, charges=[CHARGE]),
        lambda c, e, d: event(
            "remanded", c, e, d, measure="custody", court="Presnensky District Court"
        ),
        lambda c, e, d: event("transferred", c, e, d, facility=f"SIZO-{rng.randint(1, 9)}"),
        lambda c, e, d: event(
            "recognized", c, e, d, organization=rng.choice(["Memorial", "OVD-Info"])
        ),
        lambda c, e, d: event("ill_treatment_reported", c, e, d, kind="threats"),
    ]
    while len(events) < total:
        n = len(events)
        date = f"{rng.randint(2021, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        events.append(rng.choice(kinds)(rng.choice(ids), f"f{seed}-e{n:06d}", date))
    return events


# --- the log -----------------------------------------------------------------------------


async def log_contents(nc: nats.NATS) -> list[tuple[int, bytes]]:
    raw: list[tuple[int, bytes]] = []
    async for chunk in read_log(nc.jetstream()):
        raw += chunk
    return raw


def assert_acknowledged_exactly_once(
    events: list[dict], results: list[SubmitResult], raw: list[tuple[int, bytes]]
) -> list[Record]:
    """Every event was acknowledged, is in the log once, at the seq its reply named."""
    assert len(results) == len(events)
    assert Counter(r.status for r in results).keys() <= {"accepted", "duplicate"}, Counter(
        (r.status, r.code) for r in results
    )
    records = [decode_record(data, seq) for seq, data in raw]
    ids = Counter(r.event.event_id for r in records)
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
    assert set(ids) == {e["event_id"] for e in events}
    assert list(verify_chain(records)) == []
    seq_of = {r.event.event_id: r.seq for r in records}
    assert all(r.seq == seq_of[e["event_id"]] for r, e in zip(results, events))
    return records


# --- projections -------------------------------------------------------------------------


async def wait_for_projection(nc: nats.NATS, seq: int, timeout: float = 180) -> dict:
    """Until the projector answers with `as_of_seq` at or beyond `seq`."""
    client = QueryClient(nc, timeout=15)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            stats = await client.stats(min_seq=seq)
            if stats["as_of_seq"] >= seq:
                return stats
        except QueryError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the projection did not reach seq {seq}")
        await asyncio.sleep(0.2)


def projection_rows(path: Path) -> dict[str, list[tuple]]:
    """Every projection table, sorted, and the checkpoint (its time left out)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = {
            p.NAME: con.sql(f"SELECT * FROM {p.NAME} ORDER BY ALL").fetchall() for p in PROJECTIONS
        }
        rows["checkpoint"] = con.sql("SELECT last_seq FROM checkpoint").fetchall()
        return rows
    finally:
        con.close()


def rebuild(raw: list[tuple[int, bytes]], path: Path) -> dict[str, list[tuple]]:
    """A clean rebuild: a new file, every record of the log applied in order."""
    store = ProjectionStore(path)
    try:
        for i in range(0, len(raw), 5_000):
            store.apply(raw[i : i + 5_000])
    finally:
        store.close()
    return projection_rows(path)


def assert_projection_is_a_clean_rebuild(
    db: Path, raw: list[tuple[int, bytes]], scratch: Path
) -> None:
    live = projection_rows(db)
    clean = rebuild(raw, scratch)
    assert live["checkpoint"] == [(raw[-1][0],)]
    # Nothing applied twice: one timeline row per record of the log.
    assert len(live["timeline"]) == len(raw)
    for table in clean:
        assert live[table] == clean[table], table


# --- a cluster on loopback -------------------------------------------------------------


class Cluster:
    """Three nats-server processes from the shipped cluster.conf, as compose runs them."""

    def __init__(self, root: Path, size: int = 3) -> None:
        routes = [free_port() for _ in range(size)]
        route_list = "[" + ", ".join(f"nats://127.0.0.1:{p}" for p in routes) + "]"
        self.nodes = [
            NatsServer(
                root / f"n{i + 1}",
                name=f"n{i + 1}",
                conf="cluster.conf",
                env={
                    "NATS_CLUSTER_NAME": "casetrail-test",
                    "NATS_CLUSTER_HOST": "127.0.0.1",
                    "NATS_CLUSTER_PORT": str(port),
                    "NATS_ROUTES": route_list,
                },
            )
            for i, port in enumerate(routes)
        ]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, name: str) -> NatsServer:
        (found,) = [n for n in self.nodes if n.name == name]
        return found

    async def start(self) -> None:
        for node in self.nodes:
            node.start()
        await asyncio.gather(*(node.wait_ready(timeout=90) for node in self.nodes))

    def stop(self) -> None:
        for node in self.nodes:
            node.signal(signal.SIGCONT)  # a stopped (SIGSTOP) node must be able to exit
            node.stop()

    async def leader(self, nc: nats.NATS, stream: str = subjects.LOG_STREAM) -> str:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader
        return info.cluster.leader

    async def local_state(self, node: NatsServer, stream: str = subjects.LOG_STREAM) -> dict:
        """The stream as this node's own replica holds it (its monitoring endpoint)."""
        url = f"{node.monitor_url}/jsz?accounts=true&streams=true"

        def get() -> dict:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)

        jsz = await asyncio.to_thread(get)
        for account in jsz.get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail["name"] == stream:
                    return detail["state"]
        return {}

    async def wait_caught_up(
        self, node: NatsServer, messages: int, last_seq: int, timeout: float = 120
    ) -> dict:
        """Until `node`'s own replica holds the log as the others served it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                local = await self.local_state(node)
            except OSError:
                local = {}
            if local.get("messages") == messages and local.get("last_seq") == last_seq:
                return local
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"{node.name} holds {local}, not {messages} messages up to {last_seq}"
                )
            await asyncio.sleep(0.25)
