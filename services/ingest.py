"""Reading event files for `casetrail ingest`: JSON Lines and CSV.

JSON Lines: one event object per line; blank lines are skipped. Lines are sent as
they are (the recorder decides, and keeps what it refuses).

CSV: a header row, then one event per row. The column mapping:

| column | becomes |
|---|---|
| `type`, `event_id`, `case_id`, `occurred_on`, `circa`, `note`, `expected_version`, and any other field of the event type | that field |
| `a.b` (a dotted name: `person.name`, `person.birth_year`, `fine.amount`, `replacement.type`) | field `b` of the object `a` |
| `source.publisher`, `source.url`, `source.title`, `source.published_on`, `source.reliability` | the event's one source |
| `tags`, `person.aliases`, `points` and other lists of text | items separated by `;` |
| `charges` | charges in their display form separated by `;` (`RU-CC 207.3(2)(a,b,e); RU-CC 280.3(1)`), or a JSON list |
| any cell whose text starts with `[` or `{` | parsed as JSON (`sources` with several sources, for instance) |

An empty cell means the field is absent. Numbers and booleans (`true`/`false`) are
converted to the types the event needs. A display form with one bracket group
reads it as the part: write points in JSON when there is no part.

An event that has no `event_id` gets one derived from its content, so ingesting the
same file twice records it once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from schemas.events import Event

_CHARGE = re.compile(
    r"^(?P<code>\S+)\s+(?P<article>[^\s()]+)\s*(?:\((?P<part>[^)]*)\))?\s*(?:\((?P<points>[^)]*)\))?$"
)
_LIST_FIELDS = frozenset({"tags", "aliases", "points"})
_encoder = msgspec.json.Encoder()


class IngestFormatError(ValueError):
    pass


@dataclass(slots=True)
class Line:
    """One event of a file: where it came from and its JSON bytes."""

    line: int
    body: bytes


def content_event_id(body: bytes) -> str:
    return "ingest-" + hashlib.sha256(body).hexdigest()[:32]


def read_jsonl(stream: Iterable[bytes]) -> Iterator[Line]:
    for number, raw in enumerate(stream, 1):
        text = raw.strip()
        if text:
            yield Line(number, text)


def parse_charge(text: str) -> dict[str, Any]:
    m = _CHARGE.match(text.strip())
    if m is None:
        raise IngestFormatError(f"{text!r} is not a charge like RU-CC 207.3(2)(a,b,e)")
    charge: dict[str, Any] = {"code": m["code"], "article": m["article"]}
    if m["part"]:
        charge["part"] = m["part"].strip()
    if m["points"]:
        charge["points"] = [p.strip() for p in m["points"].split(",") if p.strip()]
    return charge


def _cell(name: str, text: str) -> Any:
    if text[:1] in "[{":
        try:
            return msgspec.json.decode(text.encode())
        except msgspec.DecodeError:
            return text
    if name == "charges":
        try:
            return [parse_charge(part) for part in text.split(";") if part.strip()]
        except IngestFormatError:
            return text  # sent as written: the recorder refuses it and keeps it
    if name in _LIST_FIELDS:
        return [part.strip() for part in text.split(";") if part.strip()]
    return text


def row_to_event(row: dict[str, str]) -> dict[str, Any]:
    event: dict[str, Any] = {}
    source: dict[str, Any] = {}
    for column, text in row.items():
        if column is None or text is None or not text.strip():
            continue
        path = column.strip().split(".")
        if path[0] == "source" and len(path) == 2:
            source[path[1]] = text
            continue
        target = event
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = _cell(path[-1], text)
    if source:
        event.setdefault("sources", []).append(source)
    return event


def _typed(event: dict[str, Any]) -> bytes:
    """The row as JSON with numbers and booleans typed, when the event can be read."""
    try:
        typed = msgspec.convert(event, Event, strict=False)
    except (msgspec.ValidationError, TypeError):
        return _encoder.encode(event)  # sent as is; the recorder says what is wrong
    return _encoder.encode(typed)


def read_csv(stream: io.TextIOBase | Iterable[str]) -> Iterator[Line]:
    reader = csv.DictReader(stream)  # type: ignore[arg-type]
    if reader.fieldnames is None:
        return
    for row in reader:
        event = row_to_event(row)
        if not event:
            continue
        yield Line(reader.line_num, _typed(event))


def with_event_ids(lines: Iterable[Line]) -> Iterator[Line]:
    """Give each event without an event_id one derived from its content."""
    for item in lines:
        try:
            value = msgspec.json.decode(item.body)
        except msgspec.DecodeError:
            yield item
            continue
        if isinstance(value, dict) and "event_id" not in value:
            value = {"event_id": content_event_id(item.body), **value}
            item = Line(item.line, _encoder.encode(value))
        yield item
