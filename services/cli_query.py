"""`casetrail query status|timeline|cases|stats`: ask the projector, print tables or JSON.

`--json` prints the shapes of ARCHITECTURE.md: the status object (with
`as_of_seq`), the timeline as a list of entries, the cases as a list of status
objects. Exit codes: 0 answered, 1 no such case (for that question), 2 usage or
connection errors, a projector that cannot answer, or one that did not catch up
with `--min-seq` in time.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from services.cli import EXIT_FAILED, AsJson, NatsUrl, _connect, err, fail, out, print_json, run
from services.settings import DEFAULT_NATS_URL

query_app = typer.Typer(help="Ask the projector: case status, timelines, cases, totals.", no_args_is_help=True)

On = Annotated[
    str | None, typer.Option("--on", help="The status as it stood on this day (YYYY-MM-DD).")
]
KnownAt = Annotated[
    str | None,
    typer.Option("--known-at", help="What the log said at this time (RFC 3339; a day means its start, UTC)."),
]
MinSeq = Annotated[
    int | None,
    typer.Option("--min-seq", help="Wait (up to 10 s) until the projection has applied this log position."),
]


async def _ask(nats_url: str, name: str, **fields: Any) -> Any:
    from services.queries import QueryClient, QueryError

    nc = await _connect(nats_url, f"casetrail-query-{name}")
    try:
        return await QueryClient(nc).ask(name, **fields)
    except QueryError as exc:
        if exc.code == "not_found":
            raise fail(exc.message, EXIT_FAILED) from None
        raise fail(f"{exc.code}: {exc.message}") from None
    finally:
        await nc.close()


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def _sentence(sentence: dict | None) -> str:
    if not sentence:
        return "-"
    parts = [sentence.get("punishment") or "?"]
    if sentence.get("term_months"):
        from projections.summary import term

        parts.append(term(sentence["term_months"]))
    if sentence.get("regime"):
        parts.append(f"{sentence['regime']} regime")
    return ", ".join(parts).replace("_", " ")


@query_app.command("status")
def status(
    case_id: Annotated[str, typer.Argument(help="The case, e.g. ru-2022-klokov.")],
    on: On = None,
    known_at: KnownAt = None,
    min_seq: MinSeq = None,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    as_json: AsJson = False,
) -> None:
    """The derived status of one case (EVENTS.md): custody, stage, charges, recognitions."""
    answer = run(_ask(nats_url, "status", case_id=case_id, on=on, known_at=known_at, min_seq=min_seq))
    if as_json:
        print_json(answer)
        return
    when = " ".join(x for x in (f"on {on}" if on else "", f"known at {known_at}" if known_at else "") if x)
    table = Table(show_header=False, title=f"{answer['case_id']}: {_text(answer['name'])} {when}".strip())
    rows = [
        ("custody", answer["custody"]),
        ("since", answer["custody_since"]),
        ("days in custody", answer["days_in_custody"]),
        ("stage", answer["stage"]),
        ("charges", answer["charges"]),
        ("recognised by", answer["recognized_by"]),
        ("sentence", _sentence(answer["sentence"])),
        ("last event", answer["last_event_on"]),
        ("events", answer["events"]),
        ("as of log seq", answer["as_of_seq"]),
    ]
    for key, value in rows:
        table.add_row(key, _text(value))
    out.print(table)


@query_app.command("timeline")
def timeline(
    case_id: Annotated[str, typer.Argument(help="The case, e.g. ru-2022-klokov.")],
    on: On = None,
    known_at: KnownAt = None,
    history: Annotated[
        bool, typer.Option("--history", help="Every version in log order, superseded ones too.")
    ] = False,
    min_seq: MinSeq = None,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    as_json: AsJson = False,
) -> None:
    """What happened to the person, in order, with sources; corrected events marked."""
    answer = run(
        _ask(nats_url, "timeline", case_id=case_id, on=on, known_at=known_at, history=history, min_seq=min_seq)
    )
    entries = answer["timeline"]
    if as_json:
        print_json(entries)
        return
    table = Table("date", "what happened", "sources", "recorded", "seq", title=f"{case_id} (log seq {answer['as_of_seq']})")
    if history:
        table.add_column("state")
    for entry in entries:
        date = ("c. " if entry["circa"] else "") + entry["occurred_on"]
        text = entry["summary"] + (" [corrected]" if entry["corrected"] else "")
        sources = ", ".join(s["publisher"] for s in entry["sources"])
        row = [date, text, sources, entry["recorded_at"][:19].replace("T", " "), _text(entry["seq"])]
        if history:
            row.append(entry["state"])
        table.add_row(*row)
    out.print(table)


@query_app.command("cases")
def cases(
    custody: Annotated[str | None, typer.Option(help="in_custody, house_arrest, restricted, at_liberty, wanted, deceased.")] = None,
    stage: Annotated[str | None, typer.Option(help="investigation, trial, sentenced, closed.")] = None,
    recognized_by: Annotated[str | None, typer.Option("--recognized-by", help="An organisation, e.g. Memorial.")] = None,
    article: Annotated[str | None, typer.Option(help="207.3, RU-CC 207.3, or RU-CC 207.3(2)(a,b,e).")] = None,
    jurisdiction: Annotated[str | None, typer.Option(help="ISO 3166-1 alpha-2, e.g. RU.")] = None,
    region: Annotated[str | None, typer.Option(help="e.g. Moscow.")] = None,
    on: On = None,
    known_at: KnownAt = None,
    limit: Annotated[int, typer.Option(help="At most this many cases (up to 1,000).")] = 100,
    offset: Annotated[int, typer.Option(help="Skip this many first (ordered by case id).")] = 0,
    min_seq: MinSeq = None,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    as_json: AsJson = False,
) -> None:
    """Cases matching every filter given, ordered by case id."""
    answer = run(
        _ask(
            nats_url, "cases", custody=custody, stage=stage, recognized_by=recognized_by, article=article,
            jurisdiction=jurisdiction, region=region, on=on, known_at=known_at, limit=limit, offset=offset,
            min_seq=min_seq,
        )
    )
    found = answer["cases"]
    if as_json:
        print_json(found)
        return
    table = Table("case", "name", "custody", "days", "stage", "charges", "recognised by", "last event")
    for case in found:
        table.add_row(
            case["case_id"], _text(case["name"]), _text(case["custody"]), _text(case["days_in_custody"]),
            _text(case["stage"]), _text(case["charges"]), _text(case["recognized_by"]), _text(case["last_event_on"]),
        )
    out.print(table)
    total = answer["total"]
    counted = f"{total:,}" if total is not None else "more"
    err.print(f"{len(found)} of {counted} cases (log seq {answer['as_of_seq']})", highlight=False)


@query_app.command("stats")
def stats(nats_url: NatsUrl = DEFAULT_NATS_URL, as_json: AsJson = False) -> None:
    """Totals: cases, events, by custody, by stage, by jurisdiction, recognitions."""
    answer = run(_ask(nats_url, "stats"))
    if as_json:
        print_json(answer)
        return
    table = Table(show_header=False, box=None)
    for key in ("cases", "events", "records", "in_custody_recognized", "as_of_seq"):
        table.add_row(key.replace("_", " "), f"{answer[key]:,}")
    out.print(table)
    for key in ("by_custody", "by_stage", "by_jurisdiction", "recognized_by"):
        t = Table("", "cases", title=key.replace("_", " "))
        for name, count in answer[key].items():
            t.add_row(name, f"{count:,}")
        out.print(t)
