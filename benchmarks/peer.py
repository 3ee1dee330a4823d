"""The peer: the `eventsourcing` library with its SQLite persistence, doing the same work.

A monitoring group could keep its cases with `eventsourcing` instead: one aggregate
per case, SQLite for storage. Measured here, on the same events:

- `ingest_per_command`: one command per event, the library's usual way: load the
  case aggregate (replaying its stored events), apply the event, save;
- `ingest_batched`: batches of up to 500 events: each affected aggregate is loaded
  once, all the batch's events applied, all saved in one transaction;
- `catchup`: rebuilding an equivalent status view from the library's notification
  log: every case's derived status (every key of EVENTS.md, late reports and
  corrections included) by the same pure derivation casetrail uses
  (`projections.status`), written to a SQLite table beside the events. casetrail's
  catch-up builds more (the timeline, charges and recognitions too).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from projections.effective import in_force, versions
from projections.status import walk
from projections.timeline import Stored
from schemas.dates import utc_today
from schemas.events import Event

NAMESPACE = uuid.UUID("4b4c6f6b-6f76-4e00-8000-636173657472")


class Case(Aggregate):
    """A case whose state is what the status view needs: custody, stage, event count."""

    @staticmethod
    def create_id(case_id: str, payload: dict[str, Any]) -> uuid.UUID:  # type: ignore[override]
        return uuid.uuid5(NAMESPACE, case_id)

    @event("Opened")
    def __init__(self, case_id: str, payload: dict[str, Any]) -> None:
        self.case_id = case_id
        self.custody: str | None = "at_liberty"
        self.stage: str | None = "investigation"
        self.events = 1

    @event("Recorded")
    def record(self, payload: dict[str, Any]) -> None:
        self.custody, self.stage = step(self.custody, self.stage, payload)
        self.events += 1


class Cases(Application[uuid.UUID]):
    log_section_size = 1000  # notification log pages of 1,000 (the default is 10)

    def open_or_record(self, case: Case | None, payload: dict[str, Any]) -> Case:
        if payload["type"] == "case_opened":
            return Case(payload["case_id"], payload)
        assert case is not None, payload
        case.record(payload)
        return case


_REMAND = {"custody": "in_custody", "house_arrest": "house_arrest", "restrictions": "restricted",
           "bail": "restricted", "none": "at_liberty"}
_SENTENCE = {"imprisonment": "in_custody", "restriction_of_freedom": "restricted"}


def step(custody: str | None, stage: str | None, e: dict[str, Any]) -> tuple[str | None, str | None]:
    """The walk table of EVENTS.md, applied in arrival order (the peer has no re-sorting)."""
    t = e["type"]
    if custody == "deceased":
        return custody, stage
    if t in ("detained", "transferred"):
        return "in_custody", stage
    if t == "remanded":
        return _REMAND[e["measure"]], stage
    if t == "trial_started":
        return custody, "trial"
    if t == "sentenced":
        held = "wanted" if e.get("in_absentia") and e["punishment"] == "imprisonment" else None
        return held or _SENTENCE.get(e["punishment"], "at_liberty"), "sentenced"
    if t == "appeal_decided":
        if e["outcome"] == "overturned":
            return "at_liberty", "closed"
        return custody, "trial" if e["outcome"] == "sent_back" else stage
    if t == "released":
        closing = e["reason"] in ("acquitted", "charges_dropped", "sentence_served")
        return "at_liberty", "closed" if closing else stage
    if t == "wanted":
        return "wanted", stage
    if t == "died":
        return "deceased", stage
    if t == "case_closed":
        return "at_liberty", "closed"
    return custody, stage


def _app(path: Path) -> Cases:
    return Cases(env={
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
        "SQLITE_LOCK_TIMEOUT": "10",
    })


def ingest_per_command(events: list[dict[str, Any]], path: Path) -> float:
    app = _app(path)
    started = time.perf_counter()
    for payload in events:
        case = None
        if payload["type"] != "case_opened":
            case = app.repository.get(uuid.uuid5(NAMESPACE, payload["case_id"]))
        app.save(app.open_or_record(case, payload))
    elapsed = time.perf_counter() - started
    app.close()
    return len(events) / elapsed


def ingest_batched(events: list[dict[str, Any]], path: Path, size: int = 500) -> float:
    app = _app(path)
    started = time.perf_counter()
    for start in range(0, len(events), size):
        loaded: dict[str, Case] = {}
        for payload in events[start : start + size]:
            case_id = payload["case_id"]
            case = loaded.get(case_id)
            if case is None and payload["type"] != "case_opened":
                case = app.repository.get(uuid.uuid5(NAMESPACE, case_id))
            loaded[case_id] = app.open_or_record(case, payload)
        app.save(*loaded.values())
    elapsed = time.perf_counter() - started
    app.close()
    return len(events) / elapsed


def catchup(path: Path, on_progress: Callable[[int], None] | None = None) -> tuple[float, int]:
    """Rebuild the status view from the notification log into SQLite; (events/s, events read)."""
    app = _app(path)
    records: dict[str, list[Stored]] = {}
    read = 0
    started = time.perf_counter()
    start = 1
    while True:
        page = app.notification_log.select(start=start, limit=1000)
        if not page:
            break
        for notification in page:
            domain_event = app.mapper.to_domain_event(notification)
            payload = domain_event.payload  # type: ignore[attr-defined]
            records.setdefault(payload["case_id"], []).append(
                Stored(
                    seq=notification.id,
                    recorded_at=domain_event.timestamp.isoformat(),
                    recorded_by="peer",
                    event=msgspec.convert(payload, Event),
                )
            )
            read += 1
        start = page[-1].id + 1
        if on_progress is not None:
            on_progress(len(page))
    today = utc_today()
    encoder = msgspec.json.Encoder()
    rows = []
    for case_id, case_records in records.items():
        fold = walk(case_id, in_force(versions(case_records)))
        if fold.events:
            rows.append((case_id, encoder.encode(fold.status(today, read)).decode()))
    view = sqlite3.connect(path)
    with view:
        view.execute("CREATE TABLE IF NOT EXISTS case_status (case_id TEXT PRIMARY KEY, status TEXT NOT NULL)")
        view.execute("DELETE FROM case_status")
        view.executemany("INSERT INTO case_status VALUES (?, ?)", rows)
    view.close()
    elapsed = time.perf_counter() - started
    app.close()
    return read / elapsed, read
