"""`casetrail report summary` on a generated data set: every figure recomputed from the raw events.

The oracle is SQL over the exported log alone (no projection code): corrections
and retractions applied, events sorted by (lower bound of their date, seq), the
status table of EVENTS.md written as CASE expressions. The HTML report is opened
in headless Chromium (Debian's `chromium`) behind a proxy that logs every request;
what Chromium asks for by itself on a blank page (its network clock, its account
services) is told apart, and a page that does load something is shown to be caught.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.workload import generate
from services.client import Publisher
from tests.helpers import ROOT
from tests.test_projector import start_projector

ON = "2020-06-30"


async def casetrail(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, out, err  # type: ignore[return-value]


# -- the oracle: SQL on the raw events

ORACLE = """
CREATE TEMP TABLE fixes AS SELECT case_id, target AS event_id, arg_max(ev->'replacement', seq) AS ev
    FROM raw WHERE type = 'event_corrected' GROUP BY ALL;
CREATE TEMP TABLE gone AS SELECT DISTINCT case_id, target AS event_id FROM raw WHERE type = 'event_retracted';
CREATE TEMP TABLE eff AS
    SELECT r.case_id, r.seq, coalesce(f.ev, r.ev) AS ev FROM raw r
    LEFT JOIN fixes f ON f.case_id = r.case_id AND f.event_id = r.event_id
    LEFT JOIN gone g ON g.case_id = r.case_id AND g.event_id = r.event_id
    WHERE r.type NOT IN ('event_corrected', 'event_retracted') AND g.event_id IS NULL;
CREATE TEMP TABLE ev AS SELECT *, (day - DATE '1900-01-01')::BIGINT * 10000000000 + seq AS k FROM (
    SELECT case_id, seq, ev, ev->>'type' AS type,
        CASE length(ev->>'occurred_on') WHEN 4 THEN make_date((ev->>'occurred_on')::INT, 1, 1)
             WHEN 7 THEN ((ev->>'occurred_on') || '-01')::DATE ELSE (ev->>'occurred_on')::DATE END AS day
    FROM eff) WHERE day <= $on;
CREATE TEMP TABLE effects AS SELECT case_id, k, type,
    CASE type
        WHEN 'detained' THEN 'in_custody'
        WHEN 'remanded' THEN CASE ev->>'measure' WHEN 'custody' THEN 'in_custody' WHEN 'house_arrest' THEN
            'house_arrest' WHEN 'restrictions' THEN 'restricted' WHEN 'bail' THEN 'restricted' ELSE 'at_liberty' END
        WHEN 'sentenced' THEN CASE ev->>'punishment' WHEN 'imprisonment' THEN
            CASE WHEN ev->>'in_absentia' = 'true' THEN 'wanted' ELSE 'in_custody' END
            WHEN 'restriction_of_freedom' THEN 'restricted' ELSE 'at_liberty' END
        WHEN 'appeal_decided' THEN CASE WHEN ev->>'outcome' = 'overturned' THEN 'at_liberty' END
        WHEN 'transferred' THEN 'in_custody'
        WHEN 'released' THEN 'at_liberty'
        WHEN 'wanted' THEN 'wanted'
        WHEN 'case_closed' THEN 'at_liberty'
    END AS custody,
    CASE type
        WHEN 'trial_started' THEN 'trial'
        WHEN 'sentenced' THEN 'sentenced'
        WHEN 'appeal_decided' THEN CASE ev->>'outcome' WHEN 'overturned' THEN 'closed' WHEN 'sent_back' THEN 'trial' END
        WHEN 'released' THEN CASE WHEN ev->>'reason' IN ('acquitted', 'charges_dropped', 'sentence_served')
            THEN 'closed' END
        WHEN 'case_closed' THEN 'closed'
    END AS stage
    FROM ev;
CREATE TEMP TABLE status AS SELECT case_id,
    CASE WHEN bool_or(type = 'died') THEN 'deceased'
         ELSE coalesce(arg_max(custody, k) FILTER (custody IS NOT NULL),
                       CASE WHEN bool_or(type = 'case_opened') THEN 'at_liberty' END) END AS custody,
    coalesce(arg_max(stage, k) FILTER (stage IS NOT NULL),
             CASE WHEN bool_or(type = 'case_opened') THEN 'investigation' END) AS stage
    FROM effects GROUP BY case_id;
"""

FIGURES = {
    "cases_by_custody_stage": "SELECT coalesce(custody, 'unknown'), coalesce(stage, 'unknown'), count(*) FROM status GROUP BY ALL",
    "political_prisoners_in_custody": """
        WITH rec AS (SELECT case_id, ev->>'organization' AS org, arg_max(type, k) AS last,
                            arg_max(coalesce(ev->>'designation', 'political_prisoner'), k) AS designation
                     FROM ev WHERE type IN ('recognized', 'recognition_withdrawn') GROUP BY ALL),
             held AS (SELECT r.* FROM rec r JOIN status s USING (case_id)
                      WHERE s.custody = 'in_custody' AND r.last = 'recognized' AND r.designation = 'political_prisoner')
        SELECT org, '', count(DISTINCT case_id) FROM held GROUP BY 1
        UNION ALL SELECT 'all organisations', '', count(DISTINCT case_id) FROM held""",
    "charges_by_article": """
        WITH amended AS (SELECT case_id, arg_max(ev, k) AS ev, max(k) AS k FROM ev WHERE type = 'charges_amended' GROUP BY 1),
             held AS (SELECT case_id, unnest(from_json(ev->'charges', '[{"code": "VARCHAR", "article": "VARCHAR"}]')) AS c
                      FROM amended
                      UNION ALL
                      SELECT e.case_id, unnest(from_json(e.ev->'charges', '[{"code": "VARCHAR", "article": "VARCHAR"}]'))
                      FROM ev e LEFT JOIN amended a USING (case_id) WHERE e.type = 'charged' AND (a.k IS NULL OR e.k > a.k))
        SELECT c.code || ' ' || c.article, '', count(DISTINCT case_id) FROM held GROUP BY 1""",
    "detentions_per_month": "SELECT strftime(day, '%Y-%m'), '', count(*) FROM ev WHERE type = 'detained' GROUP BY 1",
    "sentences_per_month": "SELECT strftime(day, '%Y-%m'), '', count(*) FROM ev WHERE type = 'sentenced' GROUP BY 1",
    "pretrial_custody_days": """
        WITH starts AS (SELECT case_id, min(day) AS d FROM ev
                        WHERE type = 'detained' OR (type = 'remanded' AND ev->>'measure' = 'custody') GROUP BY 1),
             verdicts AS (SELECT e.case_id, min(e.day) AS d FROM ev e JOIN starts s USING (case_id)
                          WHERE e.type = 'sentenced' AND e.day >= s.d GROUP BY 1),
             days AS (SELECT v.d - s.d AS n FROM starts s JOIN verdicts v USING (case_id))
        SELECT 'cases', '', count(*) FROM days UNION ALL SELECT 'median', '', quantile_cont(n, 0.5) FROM days
        UNION ALL SELECT 'q1', '', quantile_cont(n, 0.25) FROM days UNION ALL SELECT 'q3', '', quantile_cont(n, 0.75) FROM days
        UNION ALL SELECT 'min', '', min(n) FROM days UNION ALL SELECT 'max', '', max(n) FROM days""",
}


def oracle(export: Path, on: str) -> dict[str, dict[tuple[str, str], float]]:
    records = [json.loads(line) for line in export.read_bytes().splitlines()]
    raw = pa.table({
        "seq": [r["seq"] for r in records],
        "case_id": [r["event"]["case_id"] for r in records],
        "type": [r["event"]["type"] for r in records],
        "event_id": [r["event"]["event_id"] for r in records],
        "target": [r["event"].get("target_event_id") for r in records],
        "ev": [json.dumps(r["event"]) for r in records],
    })
    con = duckdb.connect()
    con.register("raw_arrow", raw)
    con.execute("CREATE TEMP TABLE raw AS SELECT seq, case_id, type, event_id, target, ev::JSON AS ev FROM raw_arrow")
    # The oracle's appeal rule covers what the generator writes: no appeal carries a new punishment.
    assert con.execute("SELECT count(*) FROM raw WHERE ev->>'punishment' IS NOT NULL AND type = 'appeal_decided'").fetchall() == [(0,)]
    for statement in ORACLE.replace("$on", f"DATE '{on}'").split(";"):
        if statement.strip():
            con.execute(statement)
    figures = {}
    for section, sql in FIGURES.items():
        figures[section] = {(str(a), str(b)): float(n) for a, b, n in con.execute(sql).fetchall() if n is not None}
    figures["cases"] = {("all", ""): float(con.execute("SELECT count(*) FROM status").fetchall()[0][0])}
    con.close()
    return figures


def figures_of(rows: list[tuple[str, str, str, str]]) -> dict[str, dict[tuple[str, str], float]]:
    found: dict[str, dict[tuple[str, str], float]] = {}
    for section, name, detail, value in rows:
        if section != "report" and value != "":
            found.setdefault(section, {})[(name, detail)] = float(value)
    for section in ("detentions_per_month", "sentences_per_month"):  # months with none are not listed by SQL
        found[section] = {k: v for k, v in found.get(section, {}).items() if v}
    return found


@pytest.fixture
async def reported(nats_server, nc, recorder, spawn, tmp_path):
    events = generate(6000, seed=21)
    results = await Publisher(nc, "bulk", batch_size=500).submit_many(events)
    assert all(r.ok for r in results)
    queries = await start_projector(spawn, nats_server, tmp_path / "p.duckdb", nc)
    await queries.stats(min_seq=max(r.seq for r in results))
    export = tmp_path / "log.jsonl"
    code, _, err = await casetrail("log", "export", "--out", str(export), "--nats", nats_server.url)
    assert code == 0, err
    return export


@pytest.mark.parametrize("on", [None, ON])
async def test_the_summary_equals_sql_on_the_raw_events(nats_server, reported, tmp_path, on) -> None:
    from schemas.dates import utc_today

    args = ["report", "summary", "--format", "csv", "--nats", nats_server.url] + (["--on", on] if on else [])
    code, out, err = await casetrail(*args)
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out.decode())))
    assert rows[0] == ["section", "name", "detail", "value"] and rows[1] == ["report", "on", "", on or utc_today().isoformat()]
    report = figures_of([tuple(r) for r in rows[1:]])  # type: ignore[misc]
    expected = oracle(reported, on or utc_today().isoformat())
    assert set(report) == set(expected)
    for section in expected:
        assert report[section] == pytest.approx(expected[section]), section
    assert expected["political_prisoners_in_custody"][("all organisations", "")] > 0
    assert expected["pretrial_custody_days"][("cases", "")] > 50

    parquet = tmp_path / "summary.parquet"
    code, _, err = await casetrail(*args[:2], "--format", "parquet", "--out", str(parquet), *args[4:])
    assert code == 0, err
    table = pq.read_table(parquet)
    assert table.schema.metadata[b"on"] == (on or utc_today().isoformat()).encode()
    as_rows = [(s, n, d, "" if v is None else v) for s, n, d, v in zip(*(table.column(c).to_pylist() for c in table.column_names))]
    assert figures_of(as_rows) == report


async def test_a_snapshot_gives_the_same_report_while_the_projector_goes_on(nats_server, nc, reported, tmp_path) -> None:
    code, out, err = await casetrail("snapshot", "--json", "--nats", nats_server.url)
    assert code == 0, err
    manifest = json.loads(out)
    assert Path(manifest["duckdb"]).exists() and set(manifest["parquet"]) >= {"case_status", "timeline"}
    con = duckdb.connect(manifest["duckdb"], read_only=True)  # another process reads it while the projector writes
    assert con.execute("SELECT last_seq FROM checkpoint").fetchall() == [(manifest["seq"],)]
    assert con.execute("SELECT count(*) FROM timeline").fetchall() == [(manifest["rows"]["timeline"],)] == [(manifest["seq"],)]
    con.close()
    assert duckdb.sql(f"SELECT count(*) FROM '{manifest['parquet']['case_status']}'").fetchall() == [
        (manifest["rows"]["case_status"],)]
    from_snapshot = await casetrail("report", "summary", "--format", "csv", "--snapshot", manifest["path"])
    over_nats = await casetrail("report", "summary", "--format", "csv", "--nats", nats_server.url)
    assert from_snapshot[0] == 0 and from_snapshot[1] == over_nats[1]


# -- the HTML report in a browser


class RequestLog:
    """A proxy that answers nothing and writes down every connection the browser opens."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def __aenter__(self) -> RequestLog:
        self.server = await asyncio.start_server(self._seen, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _seen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await asyncio.wait_for(reader.readline(), 5))
        finally:
            writer.close()

    def hosts(self) -> set[str]:
        """`CONNECT host:443` or `GET http://host/...`: the hosts asked for."""
        found = set()
        for line in self.requests:
            if not line.strip():
                continue  # a connection closed before any request (a preconnect): no host asked for
            target = line.split()[1].decode() if len(line.split()) > 1 else ""
            found.add(target.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0])
        return found


async def browser_noise(tmp_path: Path) -> set[str]:
    """What Chromium asks for by itself (its clock, its account services) with a blank page open."""
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body>blank</body></html>")
    async with RequestLog() as requests:
        await open_in_chromium(blank, tmp_path, requests.port, "--dump-dom", "--virtual-time-budget=5000")
    return requests.hosts()


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


async def open_in_chromium(page: Path, tmp_path: Path, proxy_port: int, *extra: str) -> str:
    args = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        f"--proxy-server=http://127.0.0.1:{proxy_port}", "--proxy-bypass-list=<-loopback>", *extra,
        page.as_uri(),
    ]
    proc = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=120)
    return proc.stdout


async def test_the_html_report_draws_its_charts_in_chromium_without_the_network(nats_server, reported, tmp_path) -> None:
    page = tmp_path / "summary.html"
    code, _, err = await casetrail("report", "summary", "--format", "html", "--out", str(page), "--nats", nats_server.url)
    assert code == 0, err
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text and " src=" not in text
    async with RequestLog() as requests:
        dom = await open_in_chromium(page, tmp_path, requests.port, "--dump-dom", "--virtual-time-budget=5000")
        await open_in_chromium(page, tmp_path, requests.port, "--window-size=900,3000",
                               f"--screenshot={tmp_path / 'summary.png'}")
    assert 'data-charts-drawn="5"' in dom, dom[:2000]
    for chart in ("political_prisoners", "custody_stage", "per_month", "charges", "pretrial"):
        assert f'data-chart="{chart}" role="img"' in dom and dom.count('data-drawn="yes"') == 5
    # Every host asked for is one the browser asks for on a blank page too: the report asks for none.
    assert requests.hosts() - await browser_noise(tmp_path) == set(), requests.requests
    assert (tmp_path / "summary.png").stat().st_size > 20_000  # a picture, not a blank page
    if os.environ.get("CASETRAIL_SCREENSHOT_DIR"):  # to look at it
        shutil.copy(tmp_path / "summary.png", Path(os.environ["CASETRAIL_SCREENSHOT_DIR"]) / "summary.png")

    # The request log does see a page that loads something from elsewhere.
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<html><body><img src="http://example.org/pixel.png"></body></html>')
    async with RequestLog() as requests:
        await open_in_chromium(leaky, tmp_path, requests.port, "--dump-dom", "--virtual-time-budget=3000")
    assert "example.org" in requests.hosts() - await browser_noise(tmp_path)
