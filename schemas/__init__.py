"""The case event vocabulary and the record format: pure data, no I/O.

Imports neither NATS nor DuckDB; every service and projection builds on this.
"""

from importlib import resources

from schemas.errors import Code, Rejected
from schemas.events import (
    AMENDMENT_TYPES,
    EVENT_CLASS,
    EVENT_TYPES,
    FACT_TYPES,
    TYPE_NAMES,
    Event,
    EventBase,
    EventCorrected,
    EventRetracted,
    FactEvent,
    canonical_bytes,
)
from schemas.record import GENESIS, Record, chain_hash, decode_record, encode_record
from schemas.validation import MAX_BATCH_EVENTS, MAX_EVENT_BYTES, decode_event, validate


def example_path(name: str = "klokov"):
    """A shipped example file of events (JSON Lines)."""
    return resources.files("schemas") / "examples" / f"{name}.jsonl"


__all__ = [
    "AMENDMENT_TYPES",
    "Code",
    "EVENT_CLASS",
    "EVENT_TYPES",
    "Event",
    "EventBase",
    "EventCorrected",
    "EventRetracted",
    "FACT_TYPES",
    "FactEvent",
    "GENESIS",
    "MAX_BATCH_EVENTS",
    "MAX_EVENT_BYTES",
    "Record",
    "Rejected",
    "TYPE_NAMES",
    "canonical_bytes",
    "chain_hash",
    "decode_event",
    "decode_record",
    "encode_record",
    "example_path",
    "validate",
]
