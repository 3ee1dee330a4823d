"""Projection: catch-up, ack-to-visibility and query latency, next to a bare reader.

Measured in one run against one embedded nats-server:

- `catch_up_events_per_s`: `casetrail serve projector` building an empty projection
  up to the head of a log of N events (the shared workload: ~10 events per case,
  late reports, corrections); `bare_events_per_s`: a nats-py ordered consumer that
  does nothing but count, reading the same stream (the ceiling), just before and
  just after the catch-up (their mean: this VM's speed moves by a fifth or more
  from one minute to the next).
- `visibility_ms`: from the recorder's ack of one event to a status query that
  sees it (`min_seq`), at a steady offered rate (default 1,000 events/s), with
  how busy the machine was meanwhile (`busy_pct`, and `steal_pct`: time the VM's
  host gave to others; latency climbs steeply as the cores fill) and which
  processes kept it busy (`cores`: the cores each used, children included).
- `query_ms`: status, timeline and filtered-cases queries over NATS, p50 and p99
  (after a tenth as many unsampled: the first read of a block pays for its I/O).
- `projector_peak_rss_mb`: the projector process's peak resident memory.

    python -m benchmarks.projection --events 1000000 [--data DIR] [--json]

`--data DIR` keeps the log between runs (the seeding through the recorder is the
slow part); the projection is always built from empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from benchmarks.workload import generate
from schemas.dates import utc_today
from services import children, subjects
from services.client import Publisher
from services.log import stream_state
from services.natsserver import NatsServer
from services.queries import QueryClient, QueryError
from services.settings import Settings
from services.streams import ensure_streams

ROOT = Path(__file__).resolve().parent.parent
FILTERS = [
    {"custody": "in_custody"},
    {"recognized_by": "Memorial"},
    {"article": "207.3", "custody": "in_custody"},
    {"jurisdiction": "BY", "stage": "sentenced"},
]


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"p50": float("nan"), "p99": float("nan")}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p99": at(0.99)}


def service(name: str, url: str, *args: str, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services", "serve", name, "--nats", url, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    children.stop(process, 30)


def cpu_times() -> list[int]:
    """The machine's CPU time so far by state (Linux /proc/stat, all cores): user,
    nice, system, idle, iowait, irq, softirq, steal."""
    try:
        return [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return []


def cpu_use(before: list[int], after: list[int]) -> dict[str, float]:
    """Percent of the machine's CPU time between two `cpu_times()`: busy (neither idle
    nor waiting for I/O) and stolen by the VM's host."""
    spent = [b - a for a, b in zip(before, after)]
    total = sum(spent)
    if len(spent) < 8 or total <= 0:
        return {}
    idle, iowait, steal = spent[3], spent[4], spent[7]
    return {
        "busy_pct": round(100 * (total - idle - iowait - steal) / total, 1),
        "steal_pct": round(100 * steal / total, 1),
    }


def service_pids(server: NatsServer, recorder: subprocess.Popen, projector: subprocess.Popen) -> dict[str, int]:
    """The service processes whose CPU `visibility` reports."""
    pids = {"projector": projector.pid, "recorder": recorder.pid}
    if server.process is not None:
        pids["nats-server"] = server.process.pid
    return pids


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) a process and its children have used so far (Linux);
    0 for a process that is gone."""
    ticks = 0
    try:
        pids = [pid, *_children(pid)]
    except OSError:
        return 0.0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def peak_rss_mb(pid: int) -> dict[str, float]:
    """VmHWM (the most resident memory each has had, Linux) of a process and its children.

    The projector's log reader is a child process: both count. `total` adds the
    peaks, which is at least the peak of the sum.
    """
    own = _hwm_kb(pid)
    children = sum(_hwm_kb(child) for child in _children(pid))
    return {
        "projector": round(own / 1024, 1),
        "log_reader": round(children / 1024, 1),
        "total": round((own + children) / 1024, 1),
    }


async def wait_for_recorder(nc: nats.NATS, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request(subjects.intake("bench-probe"), b'{"events":[]}', timeout=2)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def seed(nc: nats.NATS, events: list[dict]) -> int:
    """Submit the workload through the recorder; return the log's last seq."""
    publisher = Publisher(nc, "bench", batch_size=1000, in_flight=4)
    results = await publisher.submit_many(events)
    refused = [r for r in results if r.status == "rejected"]
    if refused:
        raise RuntimeError(f"{len(refused)} workload events were rejected, e.g. {refused[0]}")
    return (await stream_state(nc)).last_seq


async def bare_read_rate(url: str, last_seq: int) -> float:
    """A nats-py ordered consumer that only counts: the ceiling for catching up."""
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    js = nc.jetstream()
    done = asyncio.Event()
    seen = 0

    async def count(msg: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= last_seq:
            done.set()

    started = time.perf_counter()
    sub = await js.subscribe(
        subjects.LOG_ALL,
        ordered_consumer=True,
        cb=count,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=1),
        pending_msgs_limit=1_000_000,
        pending_bytes_limit=1 << 30,
    )
    await done.wait()
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    await nc.close()
    return last_seq / elapsed


async def catch_up(queries: QueryClient, last_seq: int) -> float:
    """Events per second from the projector's first answer until it has applied `last_seq`.

    The wait is a status query with `min_seq`: answered the moment the seq is applied.
    """
    while True:
        try:
            first = (await queries.stats())["as_of_seq"]
            break
        except QueryError:
            await asyncio.sleep(0.05)
    started = time.perf_counter()
    while True:
        try:
            await queries.status("-", min_seq=last_seq)
        except QueryError as exc:
            if exc.code == "not_found":
                break  # applied: the case "-" does not exist, as expected
            if exc.code != "not_caught_up":
                raise
    elapsed = time.perf_counter() - started
    return (last_seq - first) / max(elapsed, 1e-9)


async def visibility(
    nc: nats.NATS,
    queries: QueryClient,
    rate: float = 1000,
    seconds: float = 10,
    per_request: int = 10,
    warmup_s: float = 1.0,
    processes: dict[str, int] | None = None,
) -> dict:
    """Ack-to-visible latency at a steady offered rate, `per_request` events per submission.

    Each submission opens cases and records their detention (dated today, so they
    sort last); the sample is the time from its ack to the answer of a status query
    with `min_seq` set to its last seq. The submissions of the first `warmup_s` are
    offered but not sampled (the first of a run pay for what is first done).

    `processes` (name -> pid): `cores` says how many cores each used meanwhile, its
    child processes with it, and this process (`harness`: the load and the queries)
    apart from its children: where the machine's busy time went.
    """
    today = utc_today().isoformat()
    run = f"vis{int(time.time())}"
    latencies: list[float] = []
    source = [{"publisher": "bench"}]

    def events(n: int) -> list[dict]:
        out = []
        for k in range(per_request // 2):
            case_id = f"{run}-{n}-{k}"
            out.append({"type": "case_opened", "event_id": f"{case_id}-o", "case_id": case_id,
                        "occurred_on": today, "sources": source,
                        "person": {"name": f"Person {case_id}"}, "jurisdiction": "RU"})
            out.append({"type": "detained", "event_id": f"{case_id}-d", "case_id": case_id,
                        "occurred_on": today, "sources": source})
        return out

    interval = per_request / rate
    unsampled = int(warmup_s / interval)

    async def submit(n: int) -> None:
        batch = events(n)
        body = msgspec.json.encode({"events": batch})
        reply = await nc.request(subjects.intake("bench"), body, timeout=30)
        acked = time.perf_counter()
        seq = max(r["seq"] for r in msgspec.json.decode(reply.data)["results"])
        await queries.status(batch[-1]["case_id"], min_seq=seq)
        if n >= unsampled:
            latencies.append((time.perf_counter() - acked) * 1000)

    requests = unsampled + max(1, int(rate * seconds / per_request))
    tasks = []
    processes = processes or {}
    used = {name: process_cpu_s(pid) for name, pid in processes.items()}
    own = time.process_time()
    before = cpu_times()
    started = time.perf_counter()
    for n in range(requests):
        delay = started + n * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(submit(n)))
    await asyncio.gather(*tasks)
    load = cpu_use(before, cpu_times())
    elapsed = time.perf_counter() - started
    cores = {name: round((process_cpu_s(pid) - used[name]) / elapsed, 2) for name, pid in processes.items()}
    if cores:
        cores["harness"] = round((time.process_time() - own) / elapsed, 2)
    return {**percentiles(latencies), **load, **({"cores": cores} if cores else {})}


async def timed(samples: int, ask: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    latencies = []
    for n in range(samples):
        started = time.perf_counter()
        await ask(n)
        latencies.append((time.perf_counter() - started) * 1000)
    return percentiles(latencies)


async def query_latency(queries: QueryClient, case_ids: list[str], samples: int = 1000) -> dict:
    """p50 and p99 of each kind of query, after a tenth as many unsampled ones (other cases)."""
    rng = random.Random(7)
    warm = [rng.choice(case_ids) for _ in range(samples // 10)]
    for n, case_id in enumerate(warm):
        await queries.status(case_id)
        await queries.timeline(case_id)
        await queries.cases(**FILTERS[n % len(FILTERS)], limit=100)
    picks = [rng.choice(case_ids) for _ in range(samples)]
    status = await timed(samples, lambda n: queries.status(picks[n]))
    timeline = await timed(samples, lambda n: queries.timeline(picks[n]))
    cases = await timed(samples, lambda n: queries.cases(**FILTERS[n % len(FILTERS)], limit=100))
    return {
        "status_p50": status["p50"], "status_p99": status["p99"],
        "timeline_p50": timeline["p50"], "timeline_p99": timeline["p99"],
        "cases_p50": cases["p50"], "cases_p99": cases["p99"],
    }


async def run(events: int = 1_000_000, data_dir: Path | None = None, rate: float = 1000,
              seconds: float = 10, samples: int = 1000) -> dict:
    """Every figure of this benchmark in one run; `data_dir` keeps the log for the next."""
    own_dir = data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="casetrail-bench-")) if own_dir else data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    server = NatsServer(data_dir / "nats", sync_interval="always")
    services: list[subprocess.Popen[bytes]] = []
    db = data_dir / "projection.duckdb"
    for stale in (db, db.with_name(db.name + ".wal")):
        stale.unlink(missing_ok=True)
    # Generated before any connection: a long pure-Python step would starve its pings.
    workload = generate(events)
    case_ids = sorted({e["case_id"] for e in workload})
    load_before = os.getloadavg()[0]
    server.start()
    try:
        await server.wait_ready()
        settings = Settings(nats_url=server.url)
        nc = await nats.connect(server.url, pending_size=256 * 1024 * 1024)
        await ensure_streams(nc.jetstream(), settings)
        services.append(service("recorder", server.url, log_path=data_dir / "recorder.log"))
        await wait_for_recorder(nc)
        last_seq = (await stream_state(nc)).last_seq
        if last_seq < len(workload):
            started = time.perf_counter()
            last_seq = await seed(nc, workload)
            print(f"seeded {len(workload):,} events in {time.perf_counter() - started:.0f}s",
                  file=sys.stderr)
        del workload
        bare_before = await bare_read_rate(server.url, last_seq)
        print(f"bare ordered consumer: {bare_before:,.0f} events/s", file=sys.stderr)
        projector = service("projector", server.url, "--db", str(db), log_path=data_dir / "projector.log")
        services.append(projector)
        queries = QueryClient(nc)
        rate_catch_up = await catch_up(queries, last_seq)
        print(f"catch-up: {rate_catch_up:,.0f} events/s", file=sys.stderr)
        bare_after = await bare_read_rate(server.url, last_seq)
        bare = (bare_before + bare_after) / 2  # the ceiling moves with the VM: measured on both sides
        print(f"bare ordered consumer again: {bare_after:,.0f} events/s", file=sys.stderr)
        latency = await query_latency(queries, case_ids, samples)
        seen = await visibility(nc, queries, rate, seconds, processes=service_pids(server, services[0], projector))
        rss = peak_rss_mb(projector.pid)
        await nc.close()
        return {
            # Other work on the machine moves every figure: the load before and after.
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "events": last_seq,
            "cases": len(case_ids),
            "catch_up_events_per_s": round(rate_catch_up),
            "bare_events_per_s": round(bare),
            "bare_samples_events_per_s": [round(bare_before), round(bare_after)],
            "catch_up_ratio": round(rate_catch_up / bare, 2),
            "visibility_ms": seen,
            "visibility_rate": rate,
            "query_ms": latency,
            "projector_peak_rss_mb": rss,
        }
    finally:
        for process in reversed(services):
            stop(process)
        server.stop()
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=None, help="keep the log here between runs")
    parser.add_argument("--rate", type=float, default=1000, help="offered events/s for visibility")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--samples", type=int, default=1000, help="queries of each kind")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.events, args.data, args.rate, args.seconds, args.samples))
    if args.json:
        print(json.dumps(figures))
        return
    q = figures["query_ms"]
    v = figures["visibility_ms"]
    print(f"events {figures['events']:,} over {figures['cases']:,} cases "
          f"(load average {figures['load_average'][0]} before, {figures['load_average'][1]} after)")
    print(f"catch-up {figures['catch_up_events_per_s']:,}/s; bare ordered consumer "
          f"{figures['bare_events_per_s']:,}/s (ratio {figures['catch_up_ratio']})")
    print(f"ack to visible at {figures['visibility_rate']:.0f}/s: p50 {v['p50']} ms, p99 {v['p99']} ms")
    print(f"status p50 {q['status_p50']} p99 {q['status_p99']} ms; timeline p50 {q['timeline_p50']} "
          f"p99 {q['timeline_p99']} ms; cases p50 {q['cases_p50']} p99 {q['cases_p99']} ms")
    rss = figures["projector_peak_rss_mb"]
    print(f"projector peak RSS {rss['projector']} MB (+ log reader {rss['log_reader']} MB = {rss['total']} MB)")


if __name__ == "__main__":
    main()
