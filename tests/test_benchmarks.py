"""The benchmark harness's own logic: the workload's shape, and how results are judged.

No timing here: the harness measures and reports (`python -m benchmarks`).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections import Counter

from benchmarks.harness import TARGETS, Plan, ratios, table
from benchmarks.projection import process_cpu_s
from benchmarks.workload import encoded, generate
from schemas.dates import utc_today
from schemas.validation import decode_event

RESULT = {
    "ingest": {
        "events_per_s": 20_000,
        "ceiling_events_per_s": 2_500,
        "atomic_ceiling_events_per_s": 25_000,
        "peer_events_per_s": 1_000,
        "peer_batch_events_per_s": 4_000,
        "small_submissions": {"events_per_s": 5_000, "events": 5_000, "per_submission": 10, "in_flight": 16},
    },
    "catchup": {"events_per_s": 20_000, "ceiling_events_per_s": 36_000, "peer_events_per_s": 30_000},
    "replay": [{"events": 100_000, "seconds": 5.0}],
    "visibility_ms": {"p50": 20.0, "p99": 60.0},
    "visibility_by_rate": [
        {"events_per_s": 100, "p50": 10.0, "p99": 30.0},
        {"events_per_s": 1000, "p50": 20.0, "p99": 60.0, "busy_pct": 91.4, "steal_pct": 3.0,
         "cores": {"recorder": 0.2, "projector": 0.71, "nats-server": 0.4, "harness": 0.1}},
    ],
    "query_ms": {"status_p99": 4.0, "timeline_p99": 9.0, "cases_p99": 40.0},
    "rss_mb": {"recorder": 300.0, "projector": 900.0},
    "machine": {"cores": 2, "cpu": "test", "python": "3.11", "nats_server": "v2", "duckdb": "1", "date": "2026-12-01"},
    "run": {"events": 100_000, "cases": 11_000, "sync_interval": "always"},
}


def test_workload_is_deterministic_valid_and_shaped_like_the_record() -> None:
    events = generate(20_000)
    assert events == generate(20_000)  # seeded: every run measures the same events
    assert events != generate(20_000, seed=2)
    assert len(events) == 20_000
    today = utc_today()
    for raw in encoded(events[:2_000]):
        decode_event(raw, today)  # valid by the vocabulary's own rules (raises if not)

    types = Counter(e["type"] for e in events)
    amendments = types["event_corrected"] + types["event_retracted"]
    assert 0.01 <= amendments / len(events) <= 0.04  # about 2%
    for common in ("case_opened", "detained", "charged", "remanded", "sentenced"):
        assert types[common] > 0

    per_case = Counter(e["case_id"] for e in events)
    sizes = sorted(per_case.values())
    median = sizes[len(sizes) // 2]
    assert max(sizes) >= 10 * median  # a few busy cases

    # Some events are reported after events of their case that happened later.
    last_day: dict[str, str] = {}
    late = 0
    for event in events:
        day = event.get("occurred_on")
        if day is None or event["type"] in ("event_corrected", "event_retracted"):
            continue
        case = event["case_id"]
        if case in last_day and day < last_day[case]:
            late += 1
        last_day[case] = max(day, last_day.get(case, day))
    assert late / len(events) >= 0.01


def test_targets_are_judged_on_the_ratios_the_table_shows() -> None:
    q = ratios(RESULT)
    assert q["ingest / publish_async ceiling"] == 8.0
    assert q["catch-up / ceiling"] == 20_000 / 36_000
    verdicts = {name: ok(RESULT, q) for name, ok in TARGETS}
    assert verdicts["ingest at least 1.0 of the publish_async ceiling"]
    assert verdicts["ingest at least 0.7 of the atomic ceiling"]  # 20k / 25k = 0.8
    assert verdicts["catch-up at least 0.5 of its ceiling"]
    assert not verdicts["catch-up above the peer"]
    assert not verdicts["visibility p99 under 50 ms (at 1,000 events/s)"]
    assert verdicts["timeline p99 under 10 ms"]

    text = table(RESULT)
    # Ratios are rounded down: 20,000 / 36,000 = 0.5556 reads 0.55.
    assert "| catch-up from empty | 20,000 events/s | 0.55 of a bare ordered consumer (36,000/s)" in text
    assert "- NOT met: visibility p99 under 50 ms (at 1,000 events/s)" in text
    assert "| ack to visible at 100/s | p50 10.0 ms, p99 30.0 ms |" in text
    assert (
        "| ack to visible at 1,000/s | p50 20.0 ms, p99 60.0 ms | machine 91% busy (cores: projector 0.71, "
        "nats-server 0.40, recorder 0.20, harness 0.10), 3% stolen by the VM's host |"
    ) in text
    assert "| ack to visible at 100/s | p50 10.0 ms, p99 30.0 ms |  |  |" in text  # no load measured
    assert "- met: projector under 1 GiB" in text
    assert "| ingest in submissions of 10 (16 in flight) | 5,000 events/s |" in text


def test_a_slower_run_fails_the_targets_it_misses() -> None:
    slow = copy.deepcopy(RESULT)
    slow["catchup"]["events_per_s"] = 10_000
    slow["rss_mb"]["projector"] = 1_500.0
    text = table(slow)
    assert "- NOT met: catch-up at least 0.5 of its ceiling" in text
    assert "- NOT met: projector under 1 GiB" in text


def test_a_ratio_just_under_its_target_does_not_read_as_meeting_it() -> None:
    close = copy.deepcopy(RESULT)
    close["catchup"].update(events_per_s=29_738, ceiling_events_per_s=59_525)  # 0.4996
    text = table(close)
    assert "| 29,738 events/s | 0.49 of a bare ordered consumer (59,525/s)" in text
    assert "- NOT met: catch-up at least 0.5 of its ceiling" in text


def test_the_plan_sizes_replays_and_measures_each_visibility_rate_long_enough_for_its_p99() -> None:
    plan = Plan(1_000_000, quick=False)
    assert plan.small_events == 20_000  # then 980,000 in submissions of 500
    assert Plan(50_000, quick=True).small_events == 2_500
    assert plan.replay_sizes == [100_000, 300_000, 1_000_000]
    assert plan.visibility_seconds(1000) == 10.0
    assert plan.visibility_seconds(100) == 50.0  # 500 submissions of ten
    quick = Plan(50_000, quick=True)
    assert quick.visibility_seconds(100) == 10.0


def test_the_cpu_of_a_process_counts_its_children_and_a_process_gone_counts_none() -> None:
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\ntime.sleep(30)"
    before = process_cpu_s(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        deadline = time.monotonic() + 20
        while process_cpu_s(child.pid) < 0.4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_cpu_s(child.pid) >= 0.4
        assert process_cpu_s(os.getpid()) - before >= 0.4  # the child's spin, counted for its parent
    finally:
        child.kill()
        child.wait()
    assert process_cpu_s(child.pid) == 0.0
