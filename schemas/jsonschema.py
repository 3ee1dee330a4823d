"""JSON Schema of the vocabulary, generated from the Structs (never written by hand)."""

from __future__ import annotations

import msgspec

from schemas.events import Event
from schemas.intake import SubmitReply
from schemas.record import Record

TITLE = "casetrail case events, wire format v1"


def vocabulary_schema() -> dict:
    """One document: `Event` (a submission), `Record` (the log) and `SubmitReply`."""
    (event, record, reply), components = msgspec.json.schema_components(
        [Event, Record, SubmitReply], ref_template="#/$defs/{name}"
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": TITLE,
        **event,
        "$defs": {**components, "Record": record, "SubmitReply": reply},
    }
