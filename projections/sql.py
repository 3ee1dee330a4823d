"""Read-only SQL over the projections (`casetrail query sql`), with no way out of them.

The projector's DuckDB file is open for writing in the same process, so the guard
cannot be a read-only connection or a process-wide setting; it is three layers:

1. DuckDB's own parser: exactly one statement, and it must be a SELECT (so no
   INSERT/UPDATE/DELETE, DDL, ATTACH, COPY, INSTALL/LOAD, SET, PRAGMA, CALL, EXPORT).
2. Its parse tree: every table it reads is a projection table (or a CTE of the
   query); table functions (read_csv, read_text, glob, query, ...) are refused, and
   so is a quoted file name in FROM (DuckDB reads `FROM 'x.csv'` as a file) and any
   other catalog or schema; so are the few scalar functions that change or reveal
   state (nextval, setseed, current_setting).
3. It runs in a READ ONLY transaction, its rows capped and its time bounded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import duckdb

from projections import case_status, charges, recognitions, timeline
from projections.store import checkpoint_of

TABLES = frozenset(
    {
        case_status.NAME,
        f"{case_status.NAME}_today",
        timeline.NAME,
        charges.NAME,
        recognitions.NAME,
        "checkpoint",
    }
)
FUNCTIONS_REFUSED = frozenset({"nextval", "currval", "setseed", "current_setting", "getenv"})
QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
MAX_ROWS = 10_000
TIMEOUT_S = 10.0


class SqlRefused(Exception):
    """The statement is not a read of the projections; the message says what is refused."""


def _walk(node: Any) -> Iterator[dict]:
    stack = [node]
    while stack:  # iterative: a deeply nested query must not exhaust the stack here
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check(cur: duckdb.DuckDBPyConnection, query: str) -> None:
    """Raise SqlRefused unless `query` is one SELECT that reads only projection tables."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlRefused(f"not valid SQL: {exc}") from None
    if len(statements) != 1:
        raise SqlRefused(f"one statement at a time, not {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlRefused(
            f"only SELECT is allowed; this is {kind.name} (the projections are read-only)"
        )
    tree = json.loads(cur.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    if tree.get("error"):
        raise SqlRefused(tree.get("error_message", "the statement cannot be checked"))
    nodes = list(_walk(tree["statements"]))
    ctes = {entry["key"] for node in nodes if "cte_map" in node for entry in node["cte_map"]["map"]}
    for node in nodes:
        kind = node.get("type")
        if isinstance(kind, str) and kind.endswith("_NODE") and kind not in QUERY_NODES:
            # A data-modifying CTE: `WITH x AS (DELETE ... RETURNING *) SELECT ...`.
            raise SqlRefused(
                f"only reads are allowed; the statement holds a {kind.removesuffix('_QUERY_NODE')}"
            )
        if kind == "TABLE_FUNCTION":
            name = node.get("function", {}).get("function_name", "?")
            raise SqlRefused(
                f"table functions such as {name}() are not allowed; read the projection tables"
            )
        if kind == "BASE_TABLE":
            name = node["table_name"]
            where = (node.get("catalog_name", ""), node.get("schema_name", ""))
            if name in ctes and where == ("", ""):
                continue
            if name not in TABLES or where[0] not in ("",) or where[1] not in ("", "main"):
                raise SqlRefused(
                    f"no table {'.'.join(p for p in (*where, name) if p)!r} to read; "
                    f"the tables are {', '.join(sorted(TABLES))}"
                )
        if (
            node.get("class") == "FUNCTION"
            and node.get("function_name", "").lower() in FUNCTIONS_REFUSED
        ):
            raise SqlRefused(f"the function {node['function_name']}() is not allowed")


def run(
    cur: duckdb.DuckDBPyConnection, query: str, *, limit: int = MAX_ROWS, timeout: float = TIMEOUT_S
) -> dict[str, Any]:
    """`{"as_of_seq", "columns", "rows", "truncated"}` of a checked, read-only SELECT."""
    check(cur, query)
    limit = max(0, min(limit, MAX_ROWS))
    timer = threading.Timer(timeout, cur.interrupt)
    cur.execute("BEGIN TRANSACTION READ ONLY")
    try:
        as_of_seq = checkpoint_of(cur)
        timer.start()
        try:
            result = cur.execute(query)
            columns = [d[0] for d in result.description or []]
            rows = result.fetchmany(limit + 1)
        except duckdb.InterruptException:
            raise SqlRefused(f"the query took longer than {timeout:.0f} s") from None
        except duckdb.Error as exc:
            raise SqlRefused(str(exc).split("\n")[0]) from None
        finally:
            timer.cancel()
    finally:
        cur.execute("ROLLBACK")
    return {
        "as_of_seq": as_of_seq,
        "columns": columns,
        "rows": [list(r) for r in rows[:limit]],
        "truncated": len(rows) > limit,
    }
