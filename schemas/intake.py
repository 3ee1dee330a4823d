"""The intake wire format: a submission (one event or a batch) and its reply.

Request body on `casetrail.intake.<publisher>`: one event object, or
`{"events": [...]}` with up to 1,000 events. Reply:
`{"results": [{"event_id", "status", "seq", "case_version", "code", "message"}]}`,
one result per submitted event, in order.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec
from msgspec import Raw, Struct

from schemas.errors import Code, Rejected
from schemas.validation import MAX_BATCH_EVENTS

Status = Literal["accepted", "duplicate", "rejected"]


class SubmitResult(Struct, kw_only=True):
    event_id: str | None
    status: Status
    seq: int | None = None
    case_version: int | None = None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


class SubmitReply(Struct, kw_only=True):
    results: list[SubmitResult]


class Submission(Struct, frozen=True):
    """The events of one request, each still as the bytes it was submitted as."""

    events: list[Raw]
    batch: bool
    # Set when the whole request is refused (too many events, not a batch object).
    refused: Rejected | None = None


_top = msgspec.json.Decoder(dict[str, Raw])
_batch = msgspec.json.Decoder(list[Raw])
reply_encoder = msgspec.json.Encoder()
reply_decoder = msgspec.json.Decoder(SubmitReply)


def split_submission(body: bytes) -> Submission:
    """Tell a batch from a single event without decoding the events themselves."""
    try:
        top = _top.decode(body)
    except RecursionError:  # an event nested too deeply for msgspec: split without it
        parts = _split_deep_batch(body)
        if parts is None or len(parts) > MAX_BATCH_EVENTS:
            return Submission([Raw(body)], batch=False)
        return Submission([Raw(p) for p in parts], batch=True)
    except msgspec.DecodeError:
        return Submission([Raw(body)], batch=False)  # the event decoder explains what is wrong
    if "events" not in top:
        return Submission([Raw(body)], batch=False)
    if len(top) != 1:
        extra = ", ".join(sorted(k for k in top if k != "events"))
        return Submission(
            [Raw(body)],
            batch=True,
            refused=Rejected(
                Code.MALFORMED, f"`$`: a batch holds only `events`; found also {extra}"
            ),
        )
    try:
        events = _batch.decode(top["events"])
    except (msgspec.DecodeError, RecursionError):
        return Submission(
            [Raw(body)],
            batch=True,
            refused=Rejected(Code.MALFORMED, "`$.events`: must be a JSON array of events"),
        )
    if len(events) > MAX_BATCH_EVENTS:
        return Submission(
            events,
            batch=True,
            refused=Rejected(
                Code.TOO_LARGE,
                f"`$.events`: the batch holds {len(events):,} events; the limit is "
                f"{MAX_BATCH_EVENTS:,}",
            ),
        )
    return Submission(events, batch=True)


_BATCH_START = re.compile(rb'\s*\{\s*"events"\s*:\s*\[')
_BATCH_END = re.compile(rb"\s*\}\s*")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_STRUCTURAL = re.compile(rb'["\[\]{},]')


def _split_deep_batch(body: bytes) -> list[bytes] | None:
    """The events of `{"events": [...]}` found by counting brackets, not by recursing.

    Used only when msgspec gives up on a body nested deeper than the interpreter's
    recursion limit, so that one such event is refused alone (`malformed`) and the
    others of its batch are still decided. None if the body is not such a batch.
    """
    start = _BATCH_START.match(body)
    if start is None:
        return None
    parts: list[bytes] = []
    depth, pos, begin = 0, start.end(), start.end()
    while (token := _STRUCTURAL.search(body, pos)) is not None:
        at, char = token.start(), body[token.start()]
        pos = at + 1
        if char == 0x22:  # a string: skip it whole, brackets in it do not count
            string = _STRING.match(body, at)
            if string is None:
                return None
            pos = string.end()
        elif char in b"[{":
            depth += 1
        elif char in b"]}" and depth > 0:
            depth -= 1
        elif char == 0x2C and depth == 0:  # a comma between two events
            parts.append(body[begin:at].strip())
            begin = pos
        elif char == 0x5D and depth == 0:  # the end of the events array
            last = body[begin:at].strip()
            if last or parts:
                parts.append(last)
            if not all(parts) or _BATCH_END.fullmatch(body, pos) is None:
                return None
            return parts
        elif depth == 0:
            return None
    return None


def peek_event_id(raw: bytes) -> str | None:
    """The event_id of a submission that may not even decode, for the reply."""
    try:
        value = msgspec.json.decode(raw, type=_IdOnly)
    except (msgspec.DecodeError, TypeError, RecursionError):
        return None
    return value.event_id if isinstance(value.event_id, str) else None


class _IdOnly(Struct):
    event_id: object = None
