"""`query sql`: read-only SQL over the projections, answered by the projector, nothing else."""

from __future__ import annotations

import json

import duckdb
import pytest

from projections.sql import SqlRefused, check, run
from services.client import Publisher
from services.queries import QueryClient, QueryError
from tests.faults import projection_rows, wait_for_projection
from tests.helpers import wait_for_recorder
from tests.test_cli import casetrail

CASE = "ru-2022-klokov"


@pytest.fixture
async def projected(nats_server, nc, recorder, spawn, sample_lines, tmp_path):
    db = tmp_path / "projection.duckdb"
    projector = spawn("projector", "--db", str(db), "--nats", nats_server.url)
    await wait_for_recorder(nc)
    results = await Publisher(nc, "memorial").submit_many(sample_lines)
    await wait_for_projection(nc, max(r.seq for r in results))
    return projector, db


async def test_select_reads_the_projections(nc, projected) -> None:
    client = QueryClient(nc)
    answer = await client.sql(
        "WITH t AS (SELECT case_id, count(*) AS n FROM timeline GROUP BY case_id) "
        "SELECT s.case_id, s.custody, t.n FROM case_status s JOIN t USING (case_id)"
    )
    assert answer["columns"] == ["case_id", "custody", "n"]
    assert answer["rows"] == [[CASE, "in_custody", 5]] and answer["as_of_seq"] == 5
    assert answer["truncated"] is False
    capped = await client.sql("SELECT record_seq FROM timeline ORDER BY record_seq", limit=2)
    assert capped["rows"] == [[1], [2]] and capped["truncated"] is True


REFUSED = [
    # writes and schema changes
    "INSERT INTO checkpoint VALUES (99, now())",
    "UPDATE case_status SET custody = 'at_liberty'",
    "DELETE FROM timeline",
    "CREATE TABLE evil AS SELECT * FROM timeline",
    "DROP TABLE timeline",
    "ALTER TABLE timeline ADD COLUMN x INT",
    "SELECT 1; DELETE FROM timeline",
    "WITH gone AS (DELETE FROM timeline RETURNING *) SELECT * FROM gone",
    "WITH x AS (INSERT INTO checkpoint VALUES (99, now()) RETURNING *) SELECT * FROM x",
    # other databases and files
    "ATTACH '{tmp}/other.duckdb' AS other",
    "ATTACH ':memory:' AS other",
    "DETACH projection",
    "COPY timeline TO '{tmp}/leak.csv'",
    "COPY case_status FROM '/etc/passwd'",
    "EXPORT DATABASE '{tmp}/export'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/hostname')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM read_parquet('{tmp}/x.parquet')",
    "SELECT * FROM read_json('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM '{tmp}/projection.duckdb'",
    "SELECT * FROM case_status WHERE case_id IN (SELECT column0 FROM read_csv('/etc/passwd'))",
    "WITH f AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM f",
    "SELECT * FROM query('SELECT * FROM read_text(''/etc/hostname'')')",
    # extensions, settings, state
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "PRAGMA database_list",
    "CALL checkpoint()",
    "SELECT * FROM duckdb_settings()",
    "SELECT current_setting('home_directory')",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM system.main.duckdb_tables",
    "CREATE SEQUENCE s; SELECT nextval('s')",
    "SELECT nextval('s')",
]


async def test_writes_attach_copy_extensions_and_files_are_refused(nc, projected, tmp_path) -> None:
    projector, db = projected
    client = QueryClient(nc)
    answered = []
    for statement in REFUSED:
        with pytest.raises(QueryError) as refused:
            answered.append(await client.sql(statement.format(tmp=tmp_path)))
        assert refused.value.code == "bad_request", statement
        assert refused.value.message.startswith("`query`:"), (statement, refused.value.message)
    assert answered == []
    # Nothing changed, nothing was written beside it.
    assert (await client.sql("SELECT count(*) FROM timeline"))["rows"] == [[5]]
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("other", "leak", "export")))
        == []
    )
    projector.stop()
    assert len(projection_rows(db)["timeline"]) == 5


async def test_query_sql_command(nats_server, projected) -> None:
    url = ("--nats", nats_server.url)
    code, out, _ = await casetrail(
        "query", "sql", "SELECT case_id, stage FROM case_status", "--json", *url
    )
    assert code == 0 and json.loads(out)["rows"] == [[CASE, "investigation"]]
    code, out, err = await casetrail(
        "query", "sql", "SELECT * FROM read_text('/etc/hostname')", *url
    )
    assert code == 1 and b"table functions" in err and out == b""
    code, _, err = await casetrail("query", "sql", "DROP TABLE timeline", *url)
    assert code == 1 and b"only SELECT" in err


def test_refusal_messages_say_what_is_allowed_and_a_runaway_query_is_stopped() -> None:
    cur = duckdb.connect()
    with pytest.raises(SqlRefused, match="the tables are case_status"):
        check(cur, "SELECT * FROM secrets")
    with pytest.raises(SqlRefused, match="one statement at a time"):
        check(cur, "SELECT 1; SELECT 2")
    check(cur, "SELECT 1 + 1")  # no table at all is fine
    cur.execute("CREATE TABLE checkpoint (last_seq BIGINT)")
    cur.execute("INSERT INTO checkpoint VALUES (7)")
    endless = (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    )
    with pytest.raises(SqlRefused, match="longer than"):
        run(cur, endless, timeout=0.5)
    assert run(cur, "SELECT last_seq FROM checkpoint")["rows"] == [[7]]  # the cursor still works
