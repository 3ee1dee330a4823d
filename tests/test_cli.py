"""The `casetrail` command line as a user runs it: real processes, real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import msgspec
import pytest
from nats.js.api import StorageType, StreamConfig

from services.natsserver import free_port
from tests.helpers import ROOT, encode, event, opened, read_until_up


async def casetrail(*args: str, stdin: bytes | None = None, env: dict | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=120)
    return proc.returncode, out, err  # type: ignore[return-value]


async def test_ingest_jsonl_reports_and_exit_codes(nats_server, recorder, tmp_path: Path) -> None:
    url = ("--nats", nats_server.url)
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"\n".join(encode(e) for e in [opened("ru-2024-a"), event("detained", "ru-2024-a", "d1")]) + b"\n\n")
    code, out, _ = await casetrail("ingest", str(good), "--json", *url)
    assert code == 0 and json.loads(out) == {"accepted": 2, "duplicates": 0, "rejected": []}
    code, out, _ = await casetrail("ingest", str(good), "--json", *url)
    assert code == 0 and json.loads(out)["duplicates"] == 2

    bad = b"\n".join([encode(event("released", "ru-2024-a", "r1", reason="parole")), b"{oops", encode(event("detained", "nobody", "d2"))])
    code, out, _ = await casetrail("ingest", "-", "--json", "--as", "ovd-info", *url, stdin=bad)
    report = json.loads(out)
    assert code == 1 and report["accepted"] == 1
    assert [(r["line"], r["code"]) for r in report["rejected"]] == [(2, "malformed"), (3, "unknown_case")]
    assert report["rejected"][1]["event_id"] == "d2"

    code, out, _ = await casetrail("ingest", "-", *url, stdin=bad)
    assert code == 1 and b"2 duplicates" not in out and b"unknown_case" in out


async def test_ingest_events_without_ids_twice_records_them_once(nats_server, recorder, tmp_path) -> None:
    lines = [opened("ru-2024-b"), event("detained", "ru-2024-b", "x")]
    for line in lines:
        del line["event_id"]
    path = tmp_path / "no-ids.jsonl"
    path.write_bytes(b"\n".join(encode(e) for e in lines))
    for expected in ({"accepted": 2, "duplicates": 0}, {"accepted": 0, "duplicates": 2}):
        code, out, _ = await casetrail("ingest", str(path), "--json", "--nats", nats_server.url)
        assert code == 0 and json.loads(out) | expected == json.loads(out)


async def test_ingest_csv_with_the_documented_mapping(nats_server, recorder, tmp_path, nc) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "type,event_id,case_id,occurred_on,person.name,person.birth_year,jurisdiction,tags,charges,measure,circa,source.publisher,source.url\n"
        "case_opened,c1,ru-2024-csv,2024-02,Ivan Petrov,1990,RU,anti-war;journalist,,,,OVD-Info,https://ovd.info/x\n"
        "charged,c2,ru-2024-csv,2024-02-03,,,,,RU-CC 207.3(2)(a;RU-CC 280.3(1),,true,OVD-Info,\n"
        "charged,c3,ru-2024-csv,2024-02-03,,,,,\"RU-CC 207.3(2)(a,b,e); RU-CC 280.3(1)\",,true,OVD-Info,\n"
        "remanded,c4,ru-2024-csv,2024-02-04,,,,,,custody,,Mediazona,\n",
        encoding="utf-8",
    )
    code, out, _ = await casetrail("ingest", str(path), "--json", "--nats", nats_server.url)
    report = json.loads(out)
    assert code == 1 and report["accepted"] == 3
    assert [(r["line"], r["event_id"], r["code"]) for r in report["rejected"]] == [(3, "c2", "schema")]
    msg = await nc.jetstream().get_last_msg("CASETRAIL_LOG", "casetrail.log.ru-2024-csv")
    stored = msgspec.json.decode(msg.data)["event"]
    assert stored["type"] == "remanded" and stored["sources"] == [
        {"publisher": "Mediazona", "url": None, "title": None, "published_on": None, "reliability": "credible"}
    ]
    first = msgspec.json.decode((await nc.jetstream().get_msg("CASETRAIL_LOG", seq=1)).data)["event"]
    assert first["person"]["birth_year"] == 1990 and first["tags"] == ["anti-war", "journalist"]
    charged = msgspec.json.decode((await nc.jetstream().get_msg("CASETRAIL_LOG", seq=2)).data)["event"]
    assert charged["circa"] is True
    assert [(c["article"], c["part"], c["points"]) for c in charged["charges"]] == [
        ("207.3", "2", ["a", "b", "e"]),
        ("280.3", "1", []),
    ]


async def test_connection_and_usage_errors_exit_2(tmp_path) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    path = tmp_path / "one.jsonl"
    path.write_bytes(encode(opened("ru-2024-c")))
    code, _, err = await casetrail("ingest", str(path), "--nats", dead)
    assert code == 2 and b"cannot reach NATS" in err
    code, _, err = await casetrail("ingest", str(tmp_path / "missing.jsonl"), "--nats", dead)
    assert code == 2 and b"cannot read" in err
    code, _, err = await casetrail("ingest", str(path), "--as", "bad.name", "--nats", dead)
    assert code == 2


async def test_streams_ensure_creates_then_verifies_and_reports_drift(nats_server, nc) -> None:
    url = ("--nats", nats_server.url)
    code, out, _ = await casetrail("streams", "ensure", "--json", *url)
    assert code == 0 and [r["outcome"] for r in json.loads(out)] == ["created", "created"]
    code, out, _ = await casetrail("streams", "ensure", "--json", *url)
    assert code == 0 and [r["outcome"] for r in json.loads(out)] == ["ok", "ok"]

    js = nc.jetstream()
    await js.delete_stream("CASETRAIL_REJECTS")
    await js.add_stream(StreamConfig(name="CASETRAIL_REJECTS", subjects=["casetrail.rejects.*.*"], storage=StorageType.MEMORY))
    code, out, _ = await casetrail("streams", "ensure", *url)
    assert code == 1
    assert b"CASETRAIL_REJECTS: drift" in out and b"storage" in out and b"deny_purge" in out
    assert (await js.stream_info("CASETRAIL_REJECTS")).config.storage == StorageType.MEMORY  # not rewritten


async def test_log_cannot_be_purged_or_edited(nats_server, recorder, nc, sample_lines) -> None:
    from nats.js.errors import APIError

    await nc.request("casetrail.intake.memorial", b'{"events":[' + b",".join(sample_lines) + b"]}")
    js = nc.jetstream()
    with pytest.raises(APIError):
        await js.purge_stream("CASETRAIL_LOG")
    with pytest.raises(APIError):
        await js.delete_msg("CASETRAIL_LOG", 2)
    assert (await js.stream_info("CASETRAIL_LOG")).state.messages == 5


async def test_log_stats_and_schema_export(nats_server, recorder, nc, sample_lines) -> None:
    await nc.request("casetrail.intake.memorial", b'{"events":[' + b",".join(sample_lines) + b"]}")
    await nc.request("casetrail.intake.memorial", encode(event("detained", "nobody", "z1")))
    code, out, _ = await casetrail("log", "stats", "--json", "--nats", nats_server.url)
    stats = json.loads(out)
    assert code == 0
    assert (stats["records"], stats["cases"], stats["first_seq"], stats["last_seq"]) == (5, 1, 1, 5)
    assert stats["by_type"] == {"case_opened": 1, "charged": 1, "detained": 1, "recognized": 1, "remanded": 1}
    assert stats["rejects_by_code"] == {"unknown_case": 1}

    code, out, _ = await casetrail("schema", "export")
    schema = json.loads(out)
    assert code == 0 and len(schema["anyOf"]) == 19 and "Record" in schema["$defs"]


def _processes_mentioning(*texts: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if any(text.encode() in cmdline for text in texts) and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


async def _up(data: Path, port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", "up", "--data", str(data), "--port", str(port),
        "--http-port", str(free_port()), "--demo",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
    )
    seen = await read_until_up(proc.stdout)  # type: ignore[arg-type]
    assert b"demo: sample case ru-2022-klokov" in seen
    return proc


async def test_up_demo_survives_restart_and_stops_every_child(tmp_path) -> None:
    data, port = tmp_path / "data", free_port()
    url = f"nats://127.0.0.1:{port}"
    for round_ in range(2):
        proc = await _up(data, port)
        try:
            code, out, _ = await casetrail("log", "stats", "--json", "--nats", url)
            assert code == 0 and json.loads(out)["records"] == 5  # the second demo load: duplicates
            children = _processes_mentioning(str(data), url)
            assert len(children) >= 3  # up, nats-server and the recorder at least
        finally:
            proc.send_signal(signal.SIGTERM if round_ else signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 60)
        await asyncio.sleep(0.2)
        assert _processes_mentioning(str(data), url) == []


async def test_up_killed_with_sigkill_leaves_no_process_behind(tmp_path) -> None:
    """The supervisor cannot stop its children then: they stop themselves (nats-server too)."""
    data, port = tmp_path / "data", free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = await _up(data, port)
    try:
        assert len(_processes_mentioning(str(data), url)) >= 3
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
        async with asyncio.timeout(30):
            while left := _processes_mentioning(str(data), url):
                await asyncio.sleep(0.2)
        assert not left
    finally:
        for pid in _processes_mentioning(str(data), url):  # whatever a failure left running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
