"""The HTTP API against a running system: what a client sees, errors included."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

from services.client import Publisher
from services.natsserver import free_port
from services.queries import QueryClient, QueryError
from tests.helpers import event, opened
from tests.test_projector import CASE, start_projector


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as answer:
            return answer.status, answer.headers.get("content-type", ""), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers.get("content-type", ""), refused.read()


async def get_json(url: str) -> tuple[int, dict]:
    status, _, body = await asyncio.to_thread(get, url)
    return status, json.loads(body)


async def start_api(spawn, nats_server, env: dict | None = None) -> str:
    port = free_port()
    spawn("api", "--nats", nats_server.url, "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    async with asyncio.timeout(30):
        while True:
            try:
                await asyncio.to_thread(get, f"{base}/openapi.json")
                return base
            except OSError:
                await asyncio.sleep(0.1)


async def test_the_endpoints_answer_as_the_cli_does_and_refuse_clearly(
    nats_server, nc, recorder, spawn, tmp_path: Path, sample_lines
) -> None:
    results = await Publisher(nc, "memorial").submit_many(sample_lines)
    last = max(r.seq for r in results)
    queries = await start_projector(spawn, nats_server, tmp_path / "p.duckdb", nc)
    await queries.stats(min_seq=last)
    base = await start_api(spawn, nats_server)

    status, case = await get_json(f"{base}/cases/{CASE}")
    assert status == 200 and case["custody"] == "in_custody" and case["charges"] == ["RU-CC 207.3(2)(a,b,e)"]
    assert case == {**await queries.status(CASE), "days_in_custody": case["days_in_custody"]}
    status, before = await get_json(f"{base}/cases/{CASE}?on=2022-03-18")
    assert status == 200 and before["recognized_by"] == [] and before["events"] == 4
    status, timeline = await get_json(f"{base}/cases/{CASE}/timeline")
    assert status == 200 and [e["type"] for e in timeline["timeline"]] == [
        "case_opened", "detained", "charged", "remanded", "recognized"]
    status, listed = await get_json(f"{base}/cases?custody=in_custody&recognized_by=Memorial&article=207.3")
    assert status == 200 and [c["case_id"] for c in listed["cases"]] == [CASE] and listed["total"] == 1
    status, stats = await get_json(f"{base}/stats")
    assert status == 200 and (stats["cases"], stats["in_custody_recognized"]) == (1, 1)

    # Errors: an unknown case, a malformed case id, parameters out of range or not dates.
    status, body = await get_json(f"{base}/cases/ru-2099-nobody")
    assert status == 404 and body["error"]["code"] == "not_found" and "ru-2099-nobody" in body["error"]["message"]
    status, body = await get_json(f"{base}/cases/ru-2099-nobody/timeline")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await get_json(f"{base}/cases/Not_A_Case")
    assert status == 422 and body["error"]["code"] == "bad_request" and "case_id" in body["error"]["message"]
    status, body = await get_json(f"{base}/cases?limit=5000")
    assert status == 422 and body["error"]["code"] == "bad_request" and "limit" in body["error"]["message"]
    status, body = await get_json(f"{base}/cases?on=2022-02-30")
    assert status == 400 and body["error"]["code"] == "bad_request" and "`on`" in body["error"]["message"]
    status, body = await get_json(f"{base}/cases/{CASE}?known_at=yesterday")
    assert status == 400 and "known_at" in body["error"]["message"]

    status, api = await get_json(f"{base}/openapi.json")
    assert status == 200 and {"/cases", "/cases/{case_id}", "/cases/{case_id}/timeline", "/stats", "/healthz",
                              "/metrics"} <= set(api["paths"])
    status, health = await get_json(f"{base}/healthz")
    assert status == 200 and (health["status"], health["lag_events"]) == ("ok", 0)

    bad = await Publisher(nc, "memorial").submit_many([event("detained", "nobody-here", "x1")])
    assert bad[0].code == "unknown_case"
    async with asyncio.timeout(20):  # the projector looks at the log every 2 s
        while True:
            status, kind, text = await asyncio.to_thread(get, f"{base}/metrics")
            if b'casetrail_events_rejected_total{code="unknown_case"} 1.0' in text:
                break
            await asyncio.sleep(0.3)
    assert status == 200 and kind.startswith("text/plain")
    lines = text.decode().splitlines()
    assert f"casetrail_events_recorded_total {float(last)}" in lines
    assert "casetrail_projector_lag_events 0.0" in lines and "casetrail_projector_up 1.0" in lines
    assert any(line.startswith("casetrail_projector_batch_apply_seconds_count ") and float(line.split()[1]) >= 1
               for line in lines)
    assert any(line.startswith("casetrail_projector_lag_seconds ") for line in lines)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_healthz_fails_when_the_projector_is_stuck_or_gone(nats_server, nc, recorder, spawn, tmp_path) -> None:
    (first,) = await Publisher(nc, "memorial").submit_many([opened("ru-2024-h")])
    queries = QueryClient(nc, timeout=15)
    # Stuck after 2 s without progress (30 s by default).
    queries.process = spawn(  # type: ignore[attr-defined]
        "projector", "--db", str(tmp_path / "p.duckdb"), "--nats", nats_server.url, env={"CASETRAIL_STUCK_AFTER": "2"}
    )
    base = await start_api(spawn, nats_server)
    async with asyncio.timeout(60):
        while True:
            try:
                await queries.stats(min_seq=first.seq)
                break
            except QueryError:
                await asyncio.sleep(0.1)
    assert (await get_json(f"{base}/healthz"))[0] == 200

    # Its log reader frozen, the projector answers but falls behind and applies nothing.
    projector = queries.process.process  # type: ignore[attr-defined]
    (reader,) = children(projector.pid)
    os.kill(reader, signal.SIGSTOP)
    try:
        await Publisher(nc, "memorial").submit_many([event("detained", "ru-2024-h", "h-d", "2024-01-02")])
        async with asyncio.timeout(30):
            while True:
                status, health = await get_json(f"{base}/healthz")
                if status == 503:
                    break
                await asyncio.sleep(0.5)
        assert health["status"] == "stuck" and health["lag_events"] == 1 and "behind" in health["problem"]
        status, kind, text = await asyncio.to_thread(get, f"{base}/metrics")
        assert b"casetrail_projector_stuck 1.0" in text and b"casetrail_projector_lag_events 1.0" in text
    finally:
        os.kill(reader, signal.SIGCONT)
    async with asyncio.timeout(30):
        while (await get_json(f"{base}/healthz"))[0] != 200:
            await asyncio.sleep(0.5)

    await asyncio.to_thread(queries.process.stop)  # type: ignore[attr-defined]
    status, body = await get_json(f"{base}/healthz")
    assert status == 503 and body["error"]["code"] == "unavailable"
    status, _, text = await asyncio.to_thread(get, f"{base}/metrics")
    assert status == 200 and b"casetrail_projector_up 0.0" in text
