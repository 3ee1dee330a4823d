"""`python -m benchmarks`: every figure next to its ceiling and a peer, in one run.

    python -m benchmarks [--events N] [--quick] [--json] [--out DIR] [--sync always|2m]

One embedded nats-server (JetStream, `sync_interval: always` as `casetrail up`
runs it, unless `--sync` says otherwise) serves every measurement; the workload is `benchmarks.workload` (seeded,
so every run measures the same events). In order:

1. ingest ceilings: nats-py `publish_async` one by one, and atomic batches of 500,
   of the same payloads into a scratch stream;
2. ingest: the publisher client through a recorder process, durable acks: the
   first events in submissions of ten, 16 in flight (what many small publishers
   cost: group commit), the rest in submissions of 500, 8 in flight (the figure
   judged against the ceilings), then the atomic ceiling again (the ceiling
   judged against: the mean of its two reads);
3. the peer: the `eventsourcing` library with SQLite, per command and batched;
4. catch-up: a projector process from an empty projection, between two reads of
   the log by a bare ordered consumer (the ceiling: their mean); the peer's
   rebuild from its notification log;
5. query latency (status, timeline, filtered cases) and ack-to-visible latency at
   fixed offered rates, with the cores each process used meanwhile;
6. replay of the whole projection (`casetrail replay`) at growing log sizes;
7. peak RSS of the recorder and the projector.

Results go to standard output and to `benchmarks/results/<date>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from benchmarks import ingest, projection
from benchmarks.workload import encoded, generate
from services import replay
from services.log import stream_state
from services.natsserver import NatsServer, binary
from services.queries import QueryClient
from services.settings import Settings
from services.streams import ensure_streams

RESULTS = Path(__file__).resolve().parent / "results"


class Plan:
    """How much of each measurement a run does."""

    def __init__(self, events: int, quick: bool, sync: str = "always") -> None:
        self.events = events
        self.quick = quick
        self.sync = sync  # the JetStream sync_interval of the server
        self.ceiling_events = min(events, 100_000)
        # Ingested first in submissions of ten; the rest in submissions of 500.
        self.small_events = min(events // 20, 20_000)
        # The peer's per-command ingest replays each case on every load: keep it bounded.
        self.peer_events = min(events, 5_000 if quick else 20_000)
        self.samples = 200 if quick else 1000
        self.visibility_s = 3.0 if quick else 10.0
        self.visibility_samples = 100 if quick else 500  # at least, at each rate
        sizes = (10_000, 30_000, 50_000) if quick else (100_000, 300_000, 1_000_000)
        self.replay_sizes = [n for n in sizes if n <= events] or [events]

    def visibility_seconds(self, rate: float, per_request: int = 10) -> float:
        """Long enough at `rate` for the samples a p99 needs (one per submission)."""
        return max(self.visibility_s, self.visibility_samples * per_request / rate)


# Submissions of the small-submission ingest: events in each, and in flight at once.
SMALL = (10, 16)
# Offered rates of the ack-to-visible measurement; `visibility_ms` is the last one's.
VISIBILITY_RATES = (100, 300, 1000)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    server = subprocess.run([binary(), "--version"], capture_output=True, text=True).stdout.strip()
    import duckdb
    import msgspec

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "nats_server": server,
        "duckdb": duckdb.__version__,
        "msgspec": msgspec.__version__,
        "date": dt.date.today().isoformat(),
    }


async def run(plan: Plan) -> dict[str, Any]:
    # The peer needs the `bench` extra (eventsourcing); judging results does not.
    from benchmarks import peer

    data = Path(tempfile.mkdtemp(prefix="casetrail-bench-"))
    server = NatsServer(data / "nats", sync_interval=plan.sync).start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        await server.wait_ready()
        url = server.url
        settings = Settings(nats_url=url)
        nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
        await ensure_streams(nc.jetstream(), settings)

        say(f"workload: {plan.events:,} events")
        events = generate(plan.events)
        payloads = encoded(events)
        case_ids = sorted({e["case_id"] for e in events})
        # A million workload dicts live through the run: keep the collector from
        # rescanning them, so that this client is not what the figures measure.
        gc.freeze()

        n = plan.ceiling_events
        publish_async = await ingest.ceiling_publish_async(url, events[:n], payloads[:n])
        say(f"ceiling, publish_async: {publish_async:,.0f} events/s")
        atomic_before = await ingest.ceiling_atomic(url, events[:n], payloads[:n])
        say(f"ceiling, atomic batches of 500: {atomic_before:,.0f} events/s")

        recorder = projection.service("recorder", url, log_path=data / "recorder.log")
        processes.append(recorder)
        await projection.wait_for_recorder(nc)
        k = plan.small_events
        small = await ingest.recorder(url, payloads[:k], batch_size=SMALL[0], in_flight=SMALL[1])
        say(f"recorder, submissions of {SMALL[0]} ({SMALL[1]} in flight): {small:,.0f} events/s")
        recorded = await ingest.recorder(url, payloads[k:])
        say(f"recorder: {recorded:,.0f} events/s")
        # A few seconds of ceiling against most of a minute of recorder: the VM's speed
        # moves between the two, so the ceiling is measured on both sides (their mean).
        atomic_after = await ingest.ceiling_atomic(url, events[:n], payloads[:n])
        atomic = (atomic_before + atomic_after) / 2
        say(f"ceiling, atomic batches of 500 again: {atomic_after:,.0f} events/s (mean {atomic:,.0f})")
        last_seq = (await stream_state(nc)).last_seq
        del payloads

        peer_dir = data / "peer"
        peer_dir.mkdir()
        some = events[: plan.peer_events]
        peer_single = peer.ingest_per_command(some, peer_dir / "per-command.sqlite")
        say(f"peer (eventsourcing + SQLite), one command per event: {peer_single:,.0f} events/s")
        peer_batch = peer.ingest_batched(some, peer_dir / "batched.sqlite")
        say(f"peer, batches of 500: {peer_batch:,.0f} events/s")
        peer_catchup, _ = peer.catchup(peer_dir / "per-command.sqlite")
        say(f"peer, status view from the notification log: {peer_catchup:,.0f} events/s")
        del events, some

        bare_before = await projection.bare_read_rate(url, last_seq)
        say(f"ceiling, bare ordered consumer: {bare_before:,.0f} events/s")
        db = data / "projection" / "casetrail.duckdb"
        db.parent.mkdir()
        projector = projection.service("projector", url, "--db", str(db), log_path=data / "projector.log")
        processes.append(projector)
        queries = QueryClient(nc)
        caught_up = await projection.catch_up(queries, last_seq)
        say(f"projector catch-up: {caught_up:,.0f} events/s")
        bare_after = await projection.bare_read_rate(url, last_seq)
        bare = (bare_before + bare_after) / 2  # the ceiling moves with the VM: measured on both sides
        say(f"ceiling, bare ordered consumer again: {bare_after:,.0f} events/s (mean {bare:,.0f})")

        latency = await projection.query_latency(queries, case_ids, plan.samples)
        say(f"queries (ms): {latency}")
        by_rate = []
        for rate in VISIBILITY_RATES:  # the lighter loads first
            seen = await projection.visibility(
                nc, queries, rate, plan.visibility_seconds(rate),
                processes=projection.service_pids(server, recorder, projector),
            )
            by_rate.append({"events_per_s": rate, **seen})
            say(f"ack to visible at {rate:,} events/s (ms): {seen}")
        visible = {k: by_rate[-1][k] for k in ("p50", "p99")}
        # Peaks of each service with its child processes (the projector's log reader).
        rss = {
            "recorder": projection.peak_rss_mb(recorder.pid)["total"],
            "projector": projection.peak_rss_mb(projector.pid)["total"],
        }
        replays = []
        for size in plan.replay_sizes:
            # The path `casetrail replay` takes: the build runs in its own process.
            path = data / f"replay-{size}.duckdb"
            replay.remove_database(path)
            started = time.perf_counter()
            applied = await replay.build_in_child(settings, path, min(size, last_seq))
            seconds = time.perf_counter() - started
            replays.append({"events": applied, "seconds": round(seconds, 2)})
            say(f"replay of {applied:,} events: {seconds:.1f} s ({applied / seconds:,.0f}/s)")
            replay.remove_database(path)
        await nc.close()
        return {
            "ingest": {
                "events_per_s": round(recorded),
                "ceiling_events_per_s": round(publish_async),
                "atomic_ceiling_events_per_s": round(atomic),
                "atomic_ceiling_samples_events_per_s": [round(atomic_before), round(atomic_after)],
                "peer_events_per_s": round(peer_single),
                "peer_batch_events_per_s": round(peer_batch),
                "small_submissions": {
                    "events_per_s": round(small),
                    "events": plan.small_events,
                    "per_submission": SMALL[0],
                    "in_flight": SMALL[1],
                },
            },
            "catchup": {
                "events_per_s": round(caught_up),
                "ceiling_events_per_s": round(bare),
                "ceiling_samples_events_per_s": [round(bare_before), round(bare_after)],
                "peer_events_per_s": round(peer_catchup),
            },
            "replay": replays,
            "visibility_ms": visible,  # at the last (highest) of VISIBILITY_RATES
            "visibility_by_rate": by_rate,
            "query_ms": {
                "status_p99": latency["status_p99"],
                "timeline_p99": latency["timeline_p99"],
                "cases_p99": latency["cases_p99"],
            },
            "rss_mb": rss,
            "machine": machine(),
            "run": {
                "events": plan.events,
                "cases": len(case_ids),
                "ceiling_events": plan.ceiling_events,
                "peer_events": plan.peer_events,
                "quick": plan.quick,
                "sync_interval": plan.sync,
                "query_ms_p50": {k: v for k, v in latency.items() if k.endswith("_p50")},
            },
        }
    finally:
        for process in reversed(processes):
            projection.stop(process)
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def ratios(r: dict[str, Any]) -> dict[str, float]:
    i, c = r["ingest"], r["catchup"]
    return {
        "ingest / publish_async ceiling": i["events_per_s"] / i["ceiling_events_per_s"],
        "ingest / atomic ceiling": i["events_per_s"] / i["atomic_ceiling_events_per_s"],
        "ingest / peer per command": i["events_per_s"] / i["peer_events_per_s"],
        "ingest / peer batched": i["events_per_s"] / i["peer_batch_events_per_s"],
        "catch-up / ceiling": c["events_per_s"] / c["ceiling_events_per_s"],
        "catch-up / peer": c["events_per_s"] / c["peer_events_per_s"],
    }


TARGETS = [
    ("ingest at least 1.0 of the publish_async ceiling", lambda r, q: q["ingest / publish_async ceiling"] >= 1.0),
    ("ingest at least 0.7 of the atomic ceiling", lambda r, q: q["ingest / atomic ceiling"] >= 0.7),
    ("ingest 10 times the peer per command", lambda r, q: q["ingest / peer per command"] >= 10),
    ("catch-up at least 0.5 of its ceiling", lambda r, q: q["catch-up / ceiling"] >= 0.5),
    ("catch-up above the peer", lambda r, q: q["catch-up / peer"] > 1),
    ("visibility p99 under 50 ms (at 1,000 events/s)", lambda r, q: r["visibility_ms"]["p99"] < 50),
    ("timeline p99 under 10 ms", lambda r, q: r["query_ms"]["timeline_p99"] < 10),
    ("filtered cases p99 under 50 ms (our own aim; the issue sets none)", lambda r, q: r["query_ms"]["cases_p99"] < 50),
    ("projector under 1 GiB", lambda r, q: r["rss_mb"]["projector"] < 1024),
]


def _load(v: dict[str, Any]) -> str:
    """How busy the machine was meanwhile (all of it: nats-server, recorder, projector, client)."""
    if "busy_pct" not in v:
        return ""
    cores = v.get("cores") or {}
    used = ", ".join(f"{name} {n:.2f}" for name, n in sorted(cores.items(), key=lambda c: -c[1]))
    return (f"machine {v['busy_pct']:.0f}% busy{f' (cores: {used})' if used else ''}, "
            f"{v['steal_pct']:.0f}% stolen by the VM's host")


def _down(x: float, digits: int) -> str:
    """A ratio rounded down, so that it never reads as a target met when it is not (0.4996 is 0.49)."""
    scale = 10**digits
    return f"{math.floor(x * scale) / scale:.{digits}f}"


def table(r: dict[str, Any]) -> str:
    """The Markdown table README.md shows; ratios rounded down."""
    i, c, q = r["ingest"], r["catchup"], ratios(r)
    rows = [
        ("ingest through the recorder", f"{i['events_per_s']:,} events/s",
         f"{_down(q['ingest / publish_async ceiling'], 2)} of publish_async ({i['ceiling_events_per_s']:,}/s); "
         f"{_down(q['ingest / atomic ceiling'], 2)} of atomic batches ({i['atomic_ceiling_events_per_s']:,}/s)",
         f"{_down(q['ingest / peer per command'], 0)}x per command ({i['peer_events_per_s']:,}/s); "
         f"{_down(q['ingest / peer batched'], 1)}x batched ({i['peer_batch_events_per_s']:,}/s)"),
        *((f"ingest in submissions of {m['per_submission']} ({m['in_flight']} in flight)",
           f"{m['events_per_s']:,} events/s", "", "") for m in [i.get("small_submissions")] if m),
        ("catch-up from empty", f"{c['events_per_s']:,} events/s",
         f"{_down(q['catch-up / ceiling'], 2)} of a bare ordered consumer ({c['ceiling_events_per_s']:,}/s)",
         f"{_down(q['catch-up / peer'], 1)}x ({c['peer_events_per_s']:,}/s)"),
        *((f"ack to visible at {v['events_per_s']:,}/s", f"p50 {v['p50']} ms, p99 {v['p99']} ms", _load(v), "")
          for v in r.get("visibility_by_rate") or [{"events_per_s": 1000, **r["visibility_ms"]}]),
        ("query p99", f"status {r['query_ms']['status_p99']} ms, timeline {r['query_ms']['timeline_p99']} ms, "
         f"cases {r['query_ms']['cases_p99']} ms", "", ""),
        ("peak RSS", f"recorder {r['rss_mb']['recorder']} MB, projector {r['rss_mb']['projector']} MB", "", ""),
    ]
    for step in r.get("replay", []):
        rows.append((f"replay of {step['events']:,} events", f"{step['seconds']} s",
                     f"{step['events'] / step['seconds']:,.0f} events/s", ""))
    lines = ["| measure | casetrail | vs ceiling | vs peer (eventsourcing + SQLite) |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in rows]
    met = [f"- {'met' if ok(r, q) else 'NOT met'}: {name}" for name, ok in TARGETS]
    m = r["machine"]
    head = (f"{r['run']['events']:,} events over {r['run']['cases']:,} cases, JetStream sync_interval "
            f"{r['run']['sync_interval']}; {m['cores']} cores "
            f"({m['cpu']}), Python {m['python']}, {m['nats_server']}, DuckDB {m['duckdb']}, {m['date']}.")
    return "\n".join([head, "", *lines, "", *met])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None, help="log size (default 1,000,000; 50,000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a quick look: small sizes, under two minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument(
        "--sync",
        default="always",
        help="JetStream sync_interval: always (as casetrail up runs it) or a duration such as 2m "
        "(JetStream's default)",
    )
    args = parser.parse_args(argv)
    events = args.events or (50_000 if args.quick else 1_000_000)
    started = time.perf_counter()
    result = asyncio.run(run(Plan(events, args.quick, args.sync)))
    result["run"]["seconds"] = round(time.perf_counter() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    name = result["machine"]["date"] + ("-quick" if args.quick else "")
    if args.sync != "always":
        name += f"-sync-{args.sync}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(table(result) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
