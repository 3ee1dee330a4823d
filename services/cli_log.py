"""`casetrail log tail | export | verify`: the log's records, as EVENTS.md writes them.

Exit codes: 0 done (verify: every chain holds), 1 verify found a broken record,
2 usage or connection errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from services.cli import (
    EXIT_FAILED,
    EXIT_OK,
    AsJson,
    NatsUrl,
    _connect,
    err,
    fail,
    log_app,
    out,
    print_json,
    progress_bar,
    run,
)
from services.settings import DEFAULT_NATS_URL


def check_output(fmt: str, formats: tuple[str, ...], out_path: Path | None) -> None:
    """`--format` is one of `formats`; Parquet is written to a file only."""
    if fmt not in formats:
        raise fail(f"--format must be one of {', '.join(formats)}, not {fmt!r}")
    if fmt == "parquet" and out_path is None:
        raise fail("--format parquet needs --out PATH")


@log_app.command("tail")
def log_tail(
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new records as they are recorded.")] = False,
    case_id: Annotated[str | None, typer.Option("--case", help="Only this case's records.")] = None,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many of the latest records first.")] = 10,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
) -> None:
    """The latest records as JSON Lines (the record format); -f follows the log until Ctrl-C."""
    from services.logtools import tail

    if lines < 0:
        raise fail("--lines must be 0 or more")

    async def go() -> None:
        nc = await _connect(nats_url, "casetrail-log-tail")
        try:
            async for line in tail(nc, count=lines, case_id=case_id, follow=follow):
                sys.stdout.buffer.write(line)
                if follow:
                    sys.stdout.flush()
        finally:
            sys.stdout.flush()
            await nc.close()

    try:
        run(go())
    except KeyboardInterrupt:
        pass


@log_app.command("export")
def log_export(
    from_seq: Annotated[int, typer.Option("--from-seq", help="The first log position.")] = 1,
    to_seq: Annotated[int | None, typer.Option("--to-seq", help="The last log position (default: the end).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    out_path: Annotated[Path | None, typer.Option("--out", help="Write here (parquet needs it; jsonl defaults to standard output).")] = None,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
) -> None:
    """Write the log's records (seq, recorded_at, recorded_by, case_version, prev_hash, hash, event)."""
    from services.logtools import FORMATS, export

    check_output(fmt, FORMATS, out_path)
    if from_seq < 1 or (to_seq is not None and to_seq < from_seq):
        raise fail("--from-seq must be at least 1 and --to-seq not below it")

    async def go() -> int:
        nc = await _connect(nats_url, "casetrail-log-export")
        try:
            with progress_bar(None, "exporting") as bar:
                task = bar.add_task("exporting", total=None, rate="")
                advance = lambda n: bar.advance(task, n)  # noqa: E731
                if fmt == "parquet":
                    return await export(nc, out_path, fmt=fmt, from_seq=from_seq, to_seq=to_seq, progress=advance)  # type: ignore[arg-type]
                if out_path is None:
                    return await export(nc, sys.stdout.buffer, from_seq=from_seq, to_seq=to_seq, progress=advance)
                with open(out_path, "wb") as f:
                    return await export(nc, f, from_seq=from_seq, to_seq=to_seq, progress=advance)
        finally:
            await nc.close()

    written = run(go())
    err.print(f"exported {written:,} records" + (f" to {out_path}" if out_path else ""), highlight=False)


@log_app.command("verify")
def log_verify(
    path: Annotated[Path | None, typer.Argument(help="An export (JSON Lines or Parquet); without it, the log.")] = None,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    as_json: AsJson = False,
) -> None:
    """Recompute every case's hash chain; name each broken record; exit 1 if any is broken."""
    from services.logtools import verify_file, verify_log

    with progress_bar(None, "verifying") as bar:
        task = bar.add_task("verifying", total=None, rate="")
        advance = lambda n: bar.advance(task, n)  # noqa: E731
        if path is not None:
            if not path.is_file():
                raise fail(f"no file {path}")
            found = verify_file(path, advance)
        else:

            async def go():
                nc = await _connect(nats_url, "casetrail-log-verify")
                try:
                    return await verify_log(nc, advance)
                finally:
                    await nc.close()

            found = run(go())
    if as_json:
        print_json(found)
    else:
        out.print(
            f"{found.source}: {found.records:,} records of {found.cases:,} cases "
            f"(seq {found.first_seq} to {found.last_seq}): "
            + (f"[red]{len(found.broken)} broken[/red]" if found.broken else "[green]every chain holds[/green]"),
            highlight=False,
        )
        if found.broken:
            table = Table("seq", "case", "case_version", "kind", "what differs", title="Broken records")
            for b in found.broken:
                table.add_row(str(b.seq if b.seq is not None else "-"), b.case_id or "-",
                              str(b.case_version or "-"), b.kind, b.problem)
            out.print(table)
    raise typer.Exit(EXIT_FAILED if found.broken else EXIT_OK)
