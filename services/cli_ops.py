"""`casetrail replay`, `snapshot`, `report summary`, `serve api`: operators and reporting.

Replays and snapshots are asked of the projector (`casetrail.admin.*`, the operator
role), which owns its DuckDB file; reports are computed by it (`casetrail.query.report`,
any reader) or, with `--snapshot DIR`, here from a snapshot's DuckDB file.
Exit codes: 0 done, 1 a replay failed or was cancelled, 2 usage or connection errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli import (
    EXIT_FAILED,
    EXIT_OK,
    AsJson,
    NatsUrl,
    Settings,
    _connect,
    _logging,
    app,
    err,
    fail,
    out,
    print_json,
    progress_bar,
    run,
    serve_app,
)
from services.cli_log import check_output
from services.settings import DEFAULT_NATS_URL

report_app = typer.Typer(help="Reports for publication: tables, CSV, Parquet, HTML with charts.", no_args_is_help=True)
app.add_typer(report_app, name="report")

RUNNING = ("building", "switching")


@contextlib.asynccontextmanager
async def asking(nats_url: str, name: str, timeout: float = 15.0) -> AsyncIterator[Any]:
    """A QueryClient for one command; a refusal ends it (exit 2) with its code and message."""
    from services.queries import QueryClient, QueryError

    nc = await _connect(nats_url, name)
    try:
        yield QueryClient(nc, timeout=timeout)
    except QueryError as exc:
        raise fail(f"{exc.code}: {exc.message}") from None
    finally:
        await nc.close()


@serve_app.command("api")
def serve_api(
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
) -> None:
    """The HTTP API over the projector's queries (stateless; OpenAPI at /docs, metrics at /metrics)."""
    from services.api import serve

    _logging()
    run(serve(Settings.from_env(nats_url=nats_url), host=host, port=port))


@app.command()
def replay(
    projection: Annotated[
        str | None,
        typer.Option(help="A projection of the file (case_status, timeline, charges, recognitions); they are rebuilt together."),
    ] = None,
    to_seq: Annotated[
        int | None, typer.Option("--to-seq", help="Build a historical copy up to this seq into its own file; the live file stays.")
    ] = None,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    as_json: AsJson = False,
) -> None:
    """Rebuild the projections from the log into a new file beside the live one, then swap it in.

    The live projector answers throughout. Ctrl-C cancels: the live file is untouched,
    and the next replay goes on from where this one stopped.
    """

    async def go() -> dict[str, Any]:
        cancel = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, cancel.set)
        async with asking(nats_url, "casetrail-replay") as client:
            status = await client.admin("replay", projection=projection, to_seq=to_seq)
            with progress_bar(status["target"] or None, "replaying") as bar:
                task = bar.add_task(status["state"], total=status["target"] or None, rate="")
                while status["state"] in RUNNING:
                    if cancel.is_set():
                        return await client.admin("replay_cancel")
                    bar.update(
                        task, completed=status["position"], total=status["target"] or None,
                        description=status["state"], rate=f"{status['rate']:,.0f} records/s",
                    )
                    try:
                        await asyncio.wait_for(cancel.wait(), 0.3)
                    except TimeoutError:
                        pass
                    status = await client.admin("replay_status")
                bar.update(task, completed=status["position"], description=status["state"])
            return status

    status = run(go())
    if as_json:
        print_json(status)
    elif status["state"] == "done":
        what = "historical copy" if status["to_seq"] is not None else "live projection, swapped in,"
        err.print(f"replay done: {what} at seq {status['position']:,} ({status['path']})", highlight=False)
    elif status["state"] == "cancelled":
        err.print(
            f"replay cancelled at seq {status['position']:,}: the live file is untouched; "
            f"run it again to go on from {status['path']}", highlight=False,
        )
    else:
        err.print(f"[red]replay {status['state']}:[/red] {status['problem']}", highlight=False)
    raise typer.Exit(EXIT_OK if status["state"] == "done" else EXIT_FAILED)


@app.command()
def snapshot(nats_url: NatsUrl = DEFAULT_NATS_URL, as_json: AsJson = False) -> None:
    """Ask the projector for a snapshot now: DuckDB and Parquet copies of its tables at one seq."""

    async def go() -> dict[str, Any]:
        async with asking(nats_url, "casetrail-snapshot", timeout=120) as client:
            return await client.admin("snapshot")

    manifest = run(go())
    if as_json:
        print_json(manifest)
        return
    out.print(f"snapshot at seq {manifest['seq']:,}: {manifest['path']}", highlight=False)
    for table, rows in manifest["rows"].items():
        out.print(f"  {table}: {rows:,} rows", highlight=False)


FORMATS = ("table", "csv", "parquet", "html")


@report_app.command("summary")
def report_summary(
    on: Annotated[str | None, typer.Option("--on", help="The report as it stood on this day (YYYY-MM-DD).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, parquet or html.")] = "table",
    out_path: Annotated[Path | None, typer.Option("--out", help="Write here (parquet needs it; the others default to standard output).")] = None,
    snapshot_dir: Annotated[
        Path | None, typer.Option("--snapshot", help="Compute it here from a snapshot directory instead of asking the projector.")
    ] = None,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
) -> None:
    """Cases by custody and stage, political prisoners in custody, charges, months, pre-trial custody."""
    from schemas.dates import BadDate, parse_full
    from services import reports

    check_output(fmt, FORMATS, out_path)
    try:
        day = parse_full(on) if on else None
    except BadDate as exc:
        raise fail(f"--on: {exc}") from None
    if snapshot_dir is not None:
        try:
            summary = reports.from_snapshot(snapshot_dir, day)
        except (OSError, ValueError) as exc:
            raise fail(str(exc)) from None
    else:
        summary = run(_ask_report(nats_url, on))
    if fmt == "table":
        reports.print_tables(summary, out)
        return
    data = reports.render(summary, fmt)
    if out_path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        out_path.write_bytes(data)
        err.print(f"wrote {out_path}", highlight=False)


async def _ask_report(nats_url: str, on: str | None) -> Any:
    from services.reports import decode

    async with asking(nats_url, "casetrail-report", timeout=300) as client:
        return decode(await client.report(on=on))
