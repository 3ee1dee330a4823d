"""The record: what the log adds around a submitted event, and the per-case hash chain.

A record is `{"seq", "recorded_at", "recorded_by", "case_version", "prev_hash",
"hash", "event"}`. `seq` is the log's own position (the JetStream stream
sequence), so it is not stored in the message body and not covered by the hash;
everything else is.

`hash` = SHA-256 (hex) over, joined by NUL bytes:
`casetrail.v1`, `prev_hash`, `case_version` (decimal), `recorded_at`,
`recorded_by`, and the canonical encoding of the event
(`schemas.events.canonical_bytes`). `prev_hash` is the previous record of the same
case's `hash`, or 64 zeros for a case's first record. Editing any stored field of
a record, removing one, or reordering a case's records breaks the chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import msgspec
from msgspec import UNSET, Struct, UnsetType

from schemas.events import Event, canonical_bytes

GENESIS = "0" * 64
_SEP = b"\x00"
_DOMAIN = b"casetrail.v1"


class Record(Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    seq: int | UnsetType = UNSET
    recorded_at: str
    recorded_by: str
    case_version: int
    prev_hash: str
    hash: str
    event: Event


def chain_hash(
    prev_hash: str, case_version: int, recorded_at: str, recorded_by: str, event_bytes: bytes
) -> str:
    return hashlib.sha256(
        _SEP.join(
            (
                _DOMAIN,
                prev_hash.encode(),
                str(case_version).encode(),
                recorded_at.encode(),
                recorded_by.encode(),
                event_bytes,
            )
        )
    ).hexdigest()


def record_hash(record: Record) -> str:
    """The hash a record should carry, recomputed from its content."""
    return chain_hash(
        record.prev_hash,
        record.case_version,
        record.recorded_at,
        record.recorded_by,
        canonical_bytes(record.event),
    )


_encoder = msgspec.json.Encoder()
record_decoder = msgspec.json.Decoder(Record)


def encode_record(record: Record) -> bytes:
    """JSON of a record; `seq` is written only when it is set."""
    return _encoder.encode(record)


def encode_record_line(record: Record) -> bytes:
    """One line of JSON Lines (the export format)."""
    return _encoder.encode(record) + b"\n"


class _Envelope(Struct, gc=False):
    """A record without its event, in the same field order as `Record`."""

    recorded_at: str
    recorded_by: str
    case_version: int
    prev_hash: str
    hash: str


def record_body(
    recorded_at: str, recorded_by: str, case_version: int, prev_hash: str, hash: str, event_bytes: bytes
) -> bytes:
    """What the recorder stores: `encode_record` of the record, from the event's canonical bytes."""
    head = _encoder.encode(_Envelope(recorded_at, recorded_by, case_version, prev_hash, hash))
    return head[:-1] + b',"event":' + event_bytes + b"}"


def decode_record(data: bytes, seq: int | None = None) -> Record:
    record = record_decoder.decode(data)
    if seq is not None:
        record.seq = seq
    return record


class ChainBreak(Struct, frozen=True):
    """One record that does not verify: where it is and what differs."""

    seq: int | None
    case_id: str
    case_version: int
    problem: str


class ChainVerifier:
    """Checks records as they come, in log order, case by case.

    Each defect is reported once, at the record where it shows: an edited record
    (its hash no longer matches its content), a missing record (the next one of its
    case skips a version), records out of order (a seq not after the one before it,
    or a case_version going back), and a `prev_hash` that names no predecessor.
    """

    def __init__(self) -> None:
        self._heads: dict[str, tuple[int, str]] = {}
        self._last_seq = 0
        self.records = 0

    def check(self, record: Record) -> list[ChainBreak]:
        self.records += 1
        breaks: list[ChainBreak] = []
        case_id = record.event.case_id
        seq = None if record.seq is UNSET else record.seq

        def flag(problem: str) -> None:
            breaks.append(ChainBreak(seq, case_id, record.case_version, problem))

        if seq is not None:
            if seq <= self._last_seq:
                flag(f"out of order: seq {seq} comes after seq {self._last_seq}")
            self._last_seq = max(self._last_seq, seq)

        expected_hash = record_hash(record)
        if expected_hash != record.hash:
            flag(
                f"content does not match its hash: stored {record.hash[:16]}…, "
                f"recomputed {expected_hash[:16]}…"
            )

        version, head_hash = self._heads.get(case_id, (0, GENESIS))
        if record.case_version <= version:
            flag(f"out of order: case_version {record.case_version} after {version}")
        elif record.case_version > version + 1:
            missing = record.case_version - version - 1
            flag(
                f"{missing} record(s) missing before it: case_version {record.case_version} "
                f"follows {version}"
            )
        elif record.prev_hash != head_hash:
            flag(
                f"prev_hash {record.prev_hash[:16]}… is not the hash of case_version "
                f"{version} ({head_hash[:16]}…)"
            )
        if record.case_version > version:
            self._heads[case_id] = (record.case_version, record.hash)
        return breaks


def verify_chain(records: Iterable[Record]) -> Iterator[ChainBreak]:
    verifier = ChainVerifier()
    for record in records:
        yield from verifier.check(record)
