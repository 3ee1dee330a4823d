"""`casetrail log tail | export | verify | stats` as an operator runs them, on a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pyarrow.parquet as pq

from services.client import Publisher
from tests.helpers import ROOT, event, opened


async def casetrail(*args: str, timeout: float = 120) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    return proc.returncode, out, err  # type: ignore[return-value]


def story(case_id: str, n: int) -> list[dict]:
    events = [opened(case_id, occurred_on="2022-03-16")]
    events += [event("transferred", case_id, f"{case_id}-t{i}", "2022-04-01", facility=f"SIZO-{i}") for i in range(n - 1)]
    return events


async def recorded(nc) -> list[dict]:
    cases = [story("ru-2022-a", 6), story("ru-2022-b", 5), story("ru-2022-c", 4)]
    interleaved = [e for group in zip(*cases) for e in group] + cases[0][4:] + cases[1][4:]
    publisher = Publisher(nc, "memorial")
    for e in interleaved:  # one at a time: the seqs are in this order
        assert (await publisher.submit(e)).status == "accepted"
    return interleaved


async def test_export_then_verify_a_clean_log_and_its_jsonl_and_parquet_copies(
    nats_server, nc, recorder, tmp_path: Path
) -> None:
    events = await recorded(nc)
    url = ("--nats", nats_server.url)
    code, out, err = await casetrail("log", "export", *url)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(events) + 1))
    assert list(records[0]) == ["seq", "recorded_at", "recorded_by", "case_version", "prev_hash", "hash", "event"]
    assert [r["event"]["event_id"] for r in records] == [e["event_id"] for e in events]
    assert records[0]["recorded_by"] == "memorial" and records[0]["prev_hash"] == "0" * 64

    code, out, _ = await casetrail("log", "export", "--from-seq", "3", "--to-seq", "7", *url)
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [3, 4, 5, 6, 7]
    part = tmp_path / "part.jsonl"
    part.write_bytes(out)
    code, out, _ = await casetrail("log", "verify", str(part), "--json")
    assert code == 0 and json.loads(out)["broken"] == []  # a partial export verifies too

    code, out, _ = await casetrail("log", "verify", "--json", *url)
    report = json.loads(out)
    assert code == 0 and report["broken"] == [] and (report["records"], report["cases"]) == (len(events), 3)

    parquet = tmp_path / "log.parquet"
    code, _, err = await casetrail("log", "export", "--format", "parquet", "--out", str(parquet), *url)
    assert code == 0, err
    table = pq.read_table(parquet)
    assert table.num_rows == len(events) and table.column("case_id").to_pylist()[:3] == ["ru-2022-a", "ru-2022-b", "ru-2022-c"]
    code, out, _ = await casetrail("log", "verify", str(parquet))
    assert code == 0 and b"every chain holds" in out


async def test_verify_names_exactly_an_edited_a_removed_and_a_reordered_record(
    nats_server, nc, recorder, tmp_path: Path
) -> None:
    await recorded(nc)
    code, out, _ = await casetrail("log", "export", "--nats", nats_server.url)
    lines = out.splitlines()
    records = [json.loads(line) for line in lines]
    by_seq = {r["seq"]: r for r in records}
    # seq 4 is ru-2022-a's 2nd record: someone changes where he was held.
    edited = by_seq[4]
    assert (edited["event"]["case_id"], edited["case_version"]) == ("ru-2022-a", 2)
    edited["event"]["facility"] = "somewhere else"
    lines[3] = json.dumps(edited).encode()
    # seq 8 (ru-2022-b, 3rd record) is removed; seqs 9 and 10 (cases c and a) swap places.
    assert (by_seq[8]["event"]["case_id"], by_seq[8]["case_version"]) == ("ru-2022-b", 3)
    lines[8], lines[9] = lines[9], lines[8]
    del lines[7]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"\n".join(lines) + b"\n")

    code, out, _ = await casetrail("log", "verify", str(tampered), "--json")
    assert code == 1
    broken = json.loads(out)["broken"]
    assert [(b["kind"], b["seq"], b["case_id"]) for b in broken] == [
        ("edited", 4, "ru-2022-a"),
        ("reordered", 9, "ru-2022-c"),
        ("missing", 11, "ru-2022-b"),  # found at the next record of the case: version 4 follows 2
    ]
    assert "does not match its hash" in broken[0]["problem"]
    assert "seq 9" in broken[1]["problem"] and "seq 10" in broken[1]["problem"]
    assert "1 record(s) missing" in broken[2]["problem"] and "seq 5" in broken[2]["problem"]

    code, out, _ = await casetrail("log", "verify", str(tampered))
    assert code == 1 and b"3 broken" in out
    for text in (b"ru-2022-a", b"ru-2022-b", b"ru-2022-c", b"edited", b"missing", b"reordered"):
        assert text in out


async def test_removing_a_cases_latest_record_shows_as_a_missing_seq(nats_server, nc, recorder, tmp_path) -> None:
    await recorded(nc)
    code, out, _ = await casetrail("log", "export", "--nats", nats_server.url)
    lines = out.splitlines()
    last_of_c = max(i for i, line in enumerate(lines) if b'"case_id":"ru-2022-c"' in line)
    del lines[last_of_c]
    path = tmp_path / "short.jsonl"
    path.write_bytes(b"\n".join(lines))
    code, out, _ = await casetrail("log", "verify", str(path), "--json")
    assert code == 1
    assert [(b["kind"], b["seq"]) for b in json.loads(out)["broken"]] == [("missing", last_of_c + 1)]


async def test_tail_shows_the_latest_records_and_follows_one_case(nats_server, nc, recorder) -> None:
    events = await recorded(nc)
    url = ("--nats", nats_server.url)
    code, out, _ = await casetrail("log", "tail", "-n", "3", *url)
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [len(events) - 2, len(events) - 1, len(events)]
    code, out, _ = await casetrail("log", "tail", "--case", "ru-2022-c", "-n", "2", *url)
    tailed = [json.loads(line) for line in out.splitlines()]
    assert [(r["event"]["case_id"], r["case_version"]) for r in tailed] == [("ru-2022-c", 3), ("ru-2022-c", 4)]

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", "log", "tail", "-f", "--case", "ru-2022-b", "-n", "1", *url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT, env=os.environ.copy(),
    )
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))  # type: ignore[union-attr]
        assert (first["event"]["case_id"], first["case_version"]) == ("ru-2022-b", 5)
        await Publisher(nc, "memorial").submit_many([
            event("released", "ru-2022-a", "a-out", "2022-05-01", reason="parole"),
            event("released", "ru-2022-b", "b-out", "2022-05-01", reason="parole"),
        ])
        new = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))  # type: ignore[union-attr]
        assert (new["event"]["event_id"], new["case_version"], new["seq"]) == ("b-out", 6, len(events) + 2)
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)


async def test_stats_gives_recording_times_and_records_per_case(nats_server, nc, recorder) -> None:
    await recorded(nc)
    code, out, _ = await casetrail("log", "stats", "--json", "--nats", nats_server.url)
    stats = json.loads(out)
    assert code == 0 and stats["by_case"] == {"ru-2022-a": 6, "ru-2022-b": 5, "ru-2022-c": 4}
    assert stats["first_recorded_at"] <= stats["last_recorded_at"]
    assert stats["first_recorded_at"].endswith("Z") and stats["records"] == 15
