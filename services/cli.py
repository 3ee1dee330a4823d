"""The `casetrail` command line: parses, builds a request, hands it on, prints."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from services.settings import DEFAULT_NATS_URL, Settings

app = typer.Typer(
    name="casetrail",
    help="Keep the record of political prosecutions: an event-sourced log on NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
)
streams_app = typer.Typer(help="The JetStream streams of the log.", no_args_is_help=True)
log_app = typer.Typer(help="Inspect the log.", no_args_is_help=True)
schema_app = typer.Typer(help="The event vocabulary.", no_args_is_help=True)
serve_app = typer.Typer(help="Run one service in this process (as compose does).", no_args_is_help=True)
app.add_typer(streams_app, name="streams")
app.add_typer(log_app, name="log")
app.add_typer(schema_app, name="schema")
app.add_typer(serve_app, name="serve")
auth_app = typer.Typer(help="Access control: NATS users per role.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")

out = Console()
err = Console(stderr=True)

NatsUrl = Annotated[
    str,
    typer.Option("--nats", envvar="CASETRAIL_NATS_URL", help="NATS server URL.", show_default=True),
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; connection trouble is a usage error (exit 2)."""
    from nats.errors import NoServersError

    try:
        return asyncio.run(coro)
    except (NoServersError, ConnectionRefusedError, OSError) as exc:
        raise fail(f"cannot reach NATS: {exc}") from None


def print_json(value: object) -> None:
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(value)) + b"\n")
    sys.stdout.flush()


def progress_bar(total: int | None, description: str) -> Progress:
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    else:
        columns += [MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    return Progress(*columns, console=err, disable=not err.is_terminal)


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, os.environ.get("CASETRAIL_LOG_LEVEL", level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _connect(nats_url: str, name: str):
    from services.connection import connect

    settings = Settings.from_env(nats_url=nats_url)
    try:
        # nats-py retries a failing TLS handshake for ever: bound the wait.
        return await asyncio.wait_for(
            connect(settings, name, max_reconnect_attempts=2), settings.request_timeout_s
        )
    except TimeoutError:
        raise OSError(
            f"no connection to {nats_url} within {settings.request_timeout_s:.0f} s "
            "(with TLS: is CASETRAIL_TLS_CA the CA that signed the server's certificate?)"
        ) from None


# `casetrail query status|timeline|cases|stats` (services.cli_query); `query sql` below joins it.
from services.cli_query import query_app  # noqa: E402  (needs the helpers above)

app.add_typer(query_app, name="query")
# `casetrail log tail|export|verify` (services.cli_log) join `log stats` below;
# `casetrail replay`, `snapshot`, `report summary` are in services.cli_ops.
import services.cli_log  # noqa: E402,F401
import services.cli_ops  # noqa: E402,F401

# --- ingest ---------------------------------------------------------------------------


@app.command()
def ingest(
    path: Annotated[str, typer.Argument(help="A JSON Lines or CSV file, or - for standard input.")],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl, csv, or auto (by the file name).")
    ] = "auto",
    publisher: Annotated[
        str, typer.Option("--as", envvar="CASETRAIL_PUBLISHER", help="Publisher identity.")
    ] = "cli",
    batch_size: Annotated[int, typer.Option(help="Events per request (at most 1,000).")] = 500,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    as_json: AsJson = False,
) -> None:
    """Submit events from a file; exit 0 if all were recorded, 1 if any was rejected."""
    from services.ingest import read_csv, read_jsonl, with_event_ids

    if fmt == "auto":
        fmt = "csv" if path.lower().endswith(".csv") else "jsonl"
    if fmt not in ("jsonl", "csv"):
        raise fail(f"--format must be jsonl, csv or auto, not {fmt!r}")
    if not 1 <= batch_size <= 1000:
        raise fail("--batch-size must be between 1 and 1000")
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            data = Path(path).read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    if fmt == "csv":
        try:
            lines = list(read_csv(data.decode("utf-8-sig").splitlines(keepends=True)))
        except UnicodeDecodeError as exc:
            raise fail(f"{path} is not UTF-8 text: {exc}") from None
    else:
        lines = list(read_jsonl(data.splitlines()))
    lines = list(with_event_ids(lines))
    summary = run(_ingest(lines, publisher, batch_size, nats_url))
    rejected = summary["rejected"]
    if as_json:
        print_json(summary)
    else:
        out.print(
            f"{summary['accepted']} accepted, {summary['duplicates']} duplicates, "
            f"{len(rejected)} rejected",
            highlight=False,
        )
        if rejected:
            table = Table("line", "event_id", "code", "message", title="Rejected")
            for item in rejected:
                table.add_row(str(item["line"]), str(item["event_id"]), item["code"], item["message"])
            out.print(table)
    raise typer.Exit(EXIT_FAILED if rejected else EXIT_OK)


async def _ingest(lines, publisher: str, batch_size: int, nats_url: str) -> dict[str, Any]:
    from services.client import Prepared, Publisher, PublisherError, prepare

    nc = await _connect(nats_url, f"casetrail-ingest-{publisher}")
    try:
        pub = Publisher(nc, publisher, batch_size=batch_size)
    except ValueError as exc:
        await nc.close()
        raise fail(str(exc)) from None
    prepared: list[Prepared] = [prepare(line.body) for line in lines]
    with progress_bar(len(prepared), "ingesting") as bar:
        task = bar.add_task("ingesting", total=len(prepared), rate="")
        started = asyncio.get_running_loop().time()

        def advance(n: int) -> None:
            bar.advance(task, n)
            done = bar.tasks[0].completed
            elapsed = max(asyncio.get_running_loop().time() - started, 1e-6)
            bar.update(task, rate=f"{done / elapsed:,.0f} events/s")

        try:
            results = await pub.submit_many(prepared, progress=advance)
        except PublisherError as exc:
            raise fail(str(exc)) from None
        finally:
            await nc.drain()
    counts = Counter(r.status for r in results)
    return {
        "accepted": counts["accepted"],
        "duplicates": counts["duplicate"],
        "rejected": [
            {"line": line.line, "event_id": r.event_id, "code": r.code, "message": r.message}
            for line, r in zip(lines, results)
            if r.status == "rejected"
        ],
    }


# --- streams, log, schema -------------------------------------------------------------


@streams_app.command("ensure")
def streams_ensure(nats_url: NatsUrl = DEFAULT_NATS_URL, as_json: AsJson = False) -> None:
    """Create the streams, or verify them: exit 1 and report any drift; never rewrite."""
    from services.streams import ensure_streams

    async def go():
        nc = await _connect(nats_url, "casetrail-streams")
        try:
            return await ensure_streams(nc.jetstream(), Settings.from_env(nats_url=nats_url))
        finally:
            await nc.close()

    reports = run(go())
    if as_json:
        print_json(reports)
    else:
        for report in reports:
            out.print(f"{report.stream}: {report.outcome}", highlight=False)
            for drift in report.drift:
                out.print(
                    f"  {drift.field}: expected {drift.expected!r}, found {drift.actual!r}",
                    highlight=False,
                )
    raise typer.Exit(EXIT_FAILED if any(r.outcome == "drift" for r in reports) else EXIT_OK)


@log_app.command("stats")
def log_stats(nats_url: NatsUrl = DEFAULT_NATS_URL, as_json: AsJson = False) -> None:
    """Records, cases, sequence range, recording times, events by type and case, rejections by code."""
    from services.logstats import collect_stats

    async def go():
        nc = await _connect(nats_url, "casetrail-log-stats")
        try:
            with progress_bar(None, "reading the log") as bar:
                task = bar.add_task("reading the log", total=None, rate="")
                return await collect_stats(nc, progress=lambda n: bar.advance(task, n))
        finally:
            await nc.close()

    stats = run(go())
    if as_json:
        print_json(stats)
        return
    table = Table(show_header=False, box=None)
    for key in ("records", "cases", "first_seq", "last_seq", "first_recorded_at", "last_recorded_at"):
        table.add_row(key, str(getattr(stats, key)))
    out.print(table)
    busiest = dict(sorted(stats.by_case.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
    for title, counts in (
        ("by type", stats.by_type),
        ("rejects by code", stats.rejects_by_code),
        (f"records per case (the {len(busiest)} busiest of {len(stats.by_case):,}; --json for all)", busiest),
    ):
        t = Table("name", "count", title=title)
        for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            t.add_row(name, str(count))
        out.print(t)


@schema_app.command("export")
def schema_export(
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of standard output.")
    ] = None,
) -> None:
    """Write the JSON Schema of the event vocabulary (generated from the msgspec Structs)."""
    from schemas.jsonschema import vocabulary_schema

    data = msgspec.json.format(msgspec.json.encode(vocabulary_schema())) + b"\n"
    if out_path is None:
        sys.stdout.buffer.write(data)
    else:
        out_path.write_bytes(data)
        err.print(f"wrote {out_path}")


# --- services -------------------------------------------------------------------------


@serve_app.command("recorder")
def serve_recorder(nats_url: NatsUrl = DEFAULT_NATS_URL) -> None:
    """Validate, chain and append submissions (queue group casetrail-recorders)."""
    from services.recorder import serve

    _logging()
    run(serve(Settings.from_env(nats_url=nats_url)))


@serve_app.command("projector")
def serve_projector(
    db: Annotated[Path, typer.Option(help="The projection's DuckDB file (only this process opens it).")],
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    memory_limit: Annotated[str | None, typer.Option(help="DuckDB's memory limit (default 160MB).")] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="DuckDB's threads (default 1: a projector's small statements gain nothing from more)."),
    ] = None,
    snapshot_every: Annotated[
        float, typer.Option(help="Take a snapshot every this many seconds when the projection moved (0: only on request).")
    ] = 0.0,
    snapshots: Annotated[
        Path | None, typer.Option(help="Where snapshots go (default: a snapshots folder beside --db).")
    ] = None,
) -> None:
    """Follow the log into DuckDB (status, timelines, charges, recognitions); answer queries."""
    from services.projector import MEMORY_LIMIT, THREADS, serve

    _logging()
    run(
        serve(
            Settings.from_env(nats_url=nats_url), db, memory_limit=memory_limit or MEMORY_LIMIT,
            threads=threads or THREADS,
            snapshot_every_s=snapshot_every, snapshot_dir=snapshots,
        )
    )


# --- query ----------------------------------------------------------------------------


@query_app.command("sql")
def query_sql(
    query: Annotated[str, typer.Argument(help="One SELECT over the projection tables.")],
    limit: Annotated[int, typer.Option(help="At most this many rows (up to 10,000).")] = 1000,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    as_json: AsJson = False,
) -> None:
    """Read-only SQL: writes, ATTACH, COPY, INSTALL/LOAD and file access are refused (exit 1)."""
    from services.queries import QueryClient, QueryError

    async def go():
        nc = await _connect(nats_url, "casetrail-query")
        try:
            return await QueryClient(nc).sql(query, limit=limit)
        except QueryError as exc:
            return exc
        finally:
            await nc.close()

    answer = run(go())
    if not isinstance(answer, dict):
        raise fail(f"{answer.code}: {answer.message}", EXIT_FAILED)
    if as_json:
        print_json(answer)
        return
    table = Table(*answer["columns"], caption=f"as of seq {answer['as_of_seq']}")
    for row in answer["rows"]:
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)
    if answer["truncated"]:
        err.print(f"only the first {len(answer['rows'])} rows; raise --limit for more")


# --- auth -----------------------------------------------------------------------------


@auth_app.command("init")
def auth_init(
    directory: Annotated[Path, typer.Argument(help="Where to keep auth.conf and credentials/.")],
    publisher: Annotated[
        list[str] | None, typer.Option("--publisher", help="A publisher identity (repeat).")
    ] = None,
) -> None:
    """Create (or extend) a user per role: DIR/credentials/<identity>.nk and DIR/auth.conf.

    Seeds already there are kept. Mount DIR/auth.conf as the servers' auth.conf
    (compose.auth.yaml does) and give each process its identity's file in
    CASETRAIL_CREDENTIALS. Every file is readable by its owner only.
    """
    from services.access import CredentialStore, auth_conf, write_private

    store = CredentialStore(directory / "credentials")
    try:
        identities = store.ensure(tuple(publisher or ("cli",)))
    except ValueError as exc:
        raise fail(str(exc)) from None
    write_private(directory / "auth.conf", auth_conf(identities))
    for identity in identities:
        out.print(f"{identity.name}: {store.path(identity.name)}", highlight=False)


# --- up -------------------------------------------------------------------------------


@app.command()
def up(
    data: Annotated[Path, typer.Option(help="Where the log and projections live.")] = Path(
        "casetrail-data"
    ),
    port: Annotated[int, typer.Option(help="NATS client port.")] = 4222,
    http_port: Annotated[int, typer.Option(help="HTTP API port.")] = 8080,
    demo: Annotated[bool, typer.Option(help="Load the sample case.")] = False,
    auth: Annotated[
        bool, typer.Option(help="A NATS user per role; credentials (0600) under DATA/credentials.")
    ] = False,
    publisher: Annotated[
        list[str] | None,
        typer.Option(
            "--publisher", help="Under --auth, a publisher identity besides cli and demo (repeat)."
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve clients TLS with this PEM certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The certificate's PEM private key.")] = None,
    tls_ca: Annotated[
        Path | None, typer.Option(help="The CA the services trust for the server's certificate.")
    ] = None,
) -> None:
    """Run the whole system on this machine until Ctrl-C."""
    from services.up import System

    try:
        system = System(
            data.resolve(),
            port=port,
            http_port=http_port,
            on_event=lambda m: err.print(m, highlight=False),
            auth=auth,
            publishers=("cli", "demo", *(publisher or ())),
            tls_cert=tls_cert.resolve() if tls_cert else None,
            tls_key=tls_key.resolve() if tls_key else None,
            tls_ca=tls_ca.resolve() if tls_ca else None,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    run(_up(system, demo))


async def _up(system, demo: bool) -> None:
    from schemas import example_path
    from services.client import Publisher
    from services.up import install_signal_handlers

    stop = asyncio.Event()
    install_signal_handlers(stop)
    try:
        await system.start()
        if demo:
            pub = await Publisher.connect(system.settings_as("publisher-demo"), "demo")
            async with pub:
                results = await pub.submit_many(example_path().read_bytes().splitlines())
            counts = Counter(r.status for r in results)
            err.print(
                f"demo: sample case ru-2022-klokov: {counts['accepted']} accepted, "
                f"{counts['duplicate']} already recorded, {counts['rejected']} rejected",
                highlight=False,
            )
            if any(s.name == "projector" for s in system.services):
                from services.up import wait_for_projection

                # Loaded means queryable: wait until the projector has applied it.
                await wait_for_projection(system.settings, max(r.seq or 0 for r in results))
                err.print(
                    f"demo: in the projection; try: casetrail query status ru-2022-klokov "
                    f"--nats {system.server.url}",
                    highlight=False,
                )
        err.print(
            f"casetrail is up: NATS {system.server.url}"
            + (f", HTTP API {system.api_url}" if any(x.name == "api" for x in system.services) else "")
            + f". Try: casetrail log stats "
            f"--nats {system.server.url}. Ctrl-C stops it.",
            highlight=False,
        )
        if system.credentials is not None:
            err.print(
                f"access control on: credentials in {system.credentials.directory}; "
                f"e.g. export CASETRAIL_CREDENTIALS={system.credentials_of('operator')}",
                highlight=False,
            )
        await system.supervise(stop)
    finally:
        system.stop()
        err.print("stopped.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
