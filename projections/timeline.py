"""The `timeline` projection: every version of every event of a case, with a summary.

One row per record of the log. The rows in state `effective` are the case's
timeline (one per effective event, in (sort_date, seq) order); corrected versions
stay as `superseded` rows, versions of retracted events as `retracted`, and the
amendments themselves are rows too, so the history of what the record said is
kept. `event` holds the submitted event as the log stored it (JSON): timeline
queries, the bitemporal ones and the walk of a case from its history read it back
and derive the versions again (the other columns are for SQL and reports).

A row of a correction shows the replacement; its `seq` and `event_id` are those
of the event it corrects, its `recorded_at` the time the correction was recorded.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import pyarrow as pa

from projections.columns import Rows, ddl
from projections.effective import Kind, State, Version
from projections.summary import summary
from schemas.dates import lower_bound
from schemas.events import Event, EventBase

NAME = "timeline"
VERSION = 1

SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64()),  # the event's position; null for an amendment of no known event
        pa.field("record_seq", pa.int64(), nullable=False),  # this version's own record
        pa.field("event_id", pa.string(), nullable=False),  # the event this is a version of
        pa.field("record_event_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # fact | correction | retraction
        pa.field("type", pa.string(), nullable=False),
        pa.field("occurred_on", pa.string(), nullable=False),
        pa.field("sort_date", pa.date32(), nullable=False),
        pa.field("circa", pa.bool_(), nullable=False),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("recorded_at", pa.string(), nullable=False),
        pa.field("recorded_by", pa.string(), nullable=False),
        pa.field("state", pa.string(), nullable=False),  # projections.effective.State
        pa.field("corrected", pa.bool_(), nullable=False),
        pa.field("event", pa.string(), nullable=False),  # the record's event, JSON
    ]
)

DDL = [
    ddl(NAME, SCHEMA),
    # A case's rows are found by their record seqs (kept per case in memory), which
    # DuckDB matches through row-group zone maps. DuckDB 2.0.1 does not choose this
    # index for those reads (EXPLAIN: a sequential scan with the seqs as a filter);
    # it is kept for the versions that do, at little cost per insert (measured).
    f"CREATE INDEX IF NOT EXISTS {NAME}_record_seq ON {NAME} (record_seq)",
]

STATE_SCHEMA = pa.schema(
    [
        pa.field("record_seq", pa.int64(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        pa.field("corrected", pa.bool_(), nullable=False),
    ]
)

_FACT, _EFFECTIVE = Kind.FACT.value, State.EFFECTIVE.value
_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)


class Stored(msgspec.Struct, kw_only=True):
    """A record read back from its row: what the derivation needs of it."""

    seq: int
    recorded_at: str
    recorded_by: str
    event: Event


def stored(record_seq: int, recorded_at: str, recorded_by: str, event_json: str | bytes) -> Stored:
    return Stored(
        seq=record_seq,
        recorded_at=recorded_at,
        recorded_by=recorded_by,
        event=_event_decoder.decode(event_json),
    )


def content(version: Version) -> EventBase:
    """What a version says: the fact, a correction's replacement, or the retraction."""
    return version.fact if version.fact is not None else version.record.event


def add_row(rows: Rows, version: Version, event_json: str | bytes, day: dt.date | None = None) -> None:
    """One row for a version; `day` is the lower bound of what it shows, when known."""
    record = version.record
    shown = content(version)
    rows.rows.append(
        (
            shown.case_id,
            version.seq,
            record.seq,
            version.event_id,
            record.event.event_id,
            version.kind,  # StrEnum: already the text stored
            shown.type,
            shown.occurred_on,
            day or lower_bound(shown.occurred_on),
            shown.circa,
            summary(shown),
            record.recorded_at,
            record.recorded_by,
            version.state,
            version.corrected,
            event_json,
        )
    )


def add_fact_row(rows: Rows, record: Stored, event: EventBase, event_json: bytes, day: dt.date) -> None:
    """`add_row` for a new fact that is its own only version (the common case), without a Version."""
    rows.rows.append(
        (
            event.case_id,
            record.seq,
            record.seq,
            event.event_id,
            event.event_id,
            _FACT,
            event.type,
            event.occurred_on,
            day,
            event.circa,
            summary(event),
            record.recorded_at,
            record.recorded_by,
            _EFFECTIVE,
            False,
            event_json,
        )
    )


def rows() -> Rows:
    return Rows(SCHEMA, utf8=("event",))  # the event JSON, as the log holds it


def state_rows() -> Rows:
    return Rows(STATE_SCHEMA)


class Entry(msgspec.Struct, kw_only=True):
    """One line of `query timeline` (ARCHITECTURE.md)."""

    seq: int | None
    event_id: str
    type: str
    occurred_on: str
    circa: bool
    summary: str
    sources: msgspec.Raw
    recorded_at: str
    corrected: bool


class HistoryEntry(Entry, kw_only=True):
    """A line of the full history: every version, with what became of it."""

    record_seq: int
    kind: str
    state: str


def entry(version: Version, history: bool = False) -> Entry:
    """The timeline line of a version."""
    shown = content(version)
    fields = dict(
        seq=version.seq,
        event_id=version.event_id,
        type=shown.type,
        occurred_on=shown.occurred_on,
        circa=shown.circa,
        summary=summary(shown),
        sources=msgspec.Raw(_encoder.encode(shown.sources)),
        recorded_at=version.record.recorded_at,
        corrected=version.corrected,
    )
    if history:
        return HistoryEntry(
            **fields, record_seq=version.record.seq, kind=version.kind.value, state=version.state.value
        )
    return Entry(**fields)
