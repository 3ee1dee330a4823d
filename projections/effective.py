"""Which version of each event is in force: corrections, retractions and `known_at`.

EVENTS.md: the effective events of a case are its fact events, minus retracted ones
(a retraction wins over any correction, whichever came first), each corrected one
replaced by the `replacement` of its latest correction in log order, keeping its
`event_id` and `seq`. Every record of a case becomes one `Version` here, so the
timeline can keep the superseded versions as history.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from enum import StrEnum
from typing import Protocol

from schemas.dates import lower_bound, parse_rfc3339
from schemas.events import Event, EventCorrected, EventRetracted, FactEvent


class Record(Protocol):
    """What the derivation needs of a record: a `schemas.record.Record` or a stored row."""

    seq: int
    recorded_at: str
    recorded_by: str
    event: Event


class State(StrEnum):
    EFFECTIVE = "effective"  # the version in force of an event that stands
    SUPERSEDED = "superseded"  # an earlier version of an event corrected since
    RETRACTED = "retracted"  # a version of an event that was retracted
    RETRACTION = "retraction"  # the retraction record itself
    IGNORED = "ignored"  # an amendment naming no fact of this case (the recorder refuses these)


class Kind(StrEnum):
    FACT = "fact"
    CORRECTION = "correction"
    RETRACTION = "retraction"


class Version:
    """One record of a case, read as a version of the event it is about."""

    __slots__ = ("record", "kind", "event_id", "seq", "fact", "state", "corrected")

    def __init__(self, record: Record, kind: Kind, event_id: str, seq: int | None, fact: FactEvent | None):
        self.record = record
        self.kind = kind
        self.event_id = event_id  # the event this is a version of
        self.seq = seq  # that event's log position (its original record's seq)
        self.fact = fact  # the content: the event, or a correction's replacement
        self.state = State.EFFECTIVE
        self.corrected = False  # the event has at least one correction

    @property
    def day(self) -> dt.date:
        assert self.fact is not None
        return lower_bound(self.fact.occurred_on)

    @property
    def sort_key(self) -> tuple[dt.date, int]:
        return (self.day, self.seq or 0)


def known_at_filter(records: Iterable[Record], known_at: dt.datetime | None) -> list[Record]:
    """The records the log held at `known_at` (all of them when it is None), in log order."""
    kept = sorted(records, key=lambda r: r.seq)  # type: ignore[arg-type, return-value]
    if known_at is None:
        return kept
    return [r for r in kept if parse_rfc3339(r.recorded_at) <= known_at]


def versions(records: Iterable[Record], known_at: dt.datetime | None = None) -> list[Version]:
    """Every record of one case as a Version with its state, in log order."""
    out: list[Version] = []
    originals: dict[str, Version] = {}
    latest: dict[str, Version] = {}
    retracted: set[str] = set()
    corrected: set[str] = set()
    for record in known_at_filter(records, known_at):
        event = record.event
        if isinstance(event, EventCorrected | EventRetracted):
            target = originals.get(event.target_event_id)
            if isinstance(event, EventCorrected):
                version = Version(
                    record,
                    Kind.CORRECTION,
                    event.target_event_id,
                    target.seq if target else None,
                    event.replacement,
                )
                if target is not None:
                    latest[target.event_id] = version
                    corrected.add(target.event_id)
            else:
                version = Version(
                    record, Kind.RETRACTION, event.target_event_id, target.seq if target else None, None
                )
                if target is not None:
                    retracted.add(target.event_id)
            if target is None:
                version.state = State.IGNORED
        else:
            version = Version(record, Kind.FACT, event.event_id, record.seq, event)  # type: ignore[arg-type]
            originals[version.event_id] = version
            latest[version.event_id] = version
        out.append(version)
    for version in out:
        if version.state is State.IGNORED:
            continue
        if version.kind is Kind.RETRACTION:
            version.state = State.RETRACTION
        elif version.event_id in retracted:
            version.state = State.RETRACTED
        elif latest[version.event_id] is not version:
            version.state = State.SUPERSEDED
        version.corrected = version.event_id in corrected
    return out


def in_force(all_versions: Iterable[Version]) -> list[Version]:
    """The effective versions, sorted by (lower bound of occurred_on, seq): the walk's order."""
    chosen = [v for v in all_versions if v.state is State.EFFECTIVE]
    chosen.sort(key=lambda v: v.sort_key)
    return chosen


def effective(records: Iterable[Record], known_at: dt.datetime | None = None) -> list[Version]:
    """The effective events of a case, in the order the status walks them."""
    return in_force(versions(records, known_at))
