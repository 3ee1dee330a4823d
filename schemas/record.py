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
    """One record that does not verify: where it is and what differs.

    `kind` is one of `edited` (its content no longer matches its hash), `missing`
    (records of its case are missing before it), `reordered` (it comes after a later
    record of its case), `broken_link` (its `prev_hash` names no predecessor),
    `duplicate` (a case_version seen before) or `out_of_order` (a seq not after the
    one before it).
    """

    seq: int | None
    case_id: str
    case_version: int
    problem: str
    kind: str = "edited"


class _Case:
    """What the verifier knows of one case: the head of its verified chain, what came early."""

    __slots__ = ("version", "hash", "seq", "ahead", "pending")

    def __init__(self) -> None:
        self.version = 0
        self.hash = GENESIS
        self.seq: int | None = None
        self.ahead: tuple[int, int | None] | None = None  # the latest version seen early, and its seq
        # Versions that came before their predecessor: (seq, prev_hash, hash), by case_version.
        self.pending: dict[int, tuple[int | None, str, str]] = {}


def _short(digest: str) -> str:
    return f"{digest[:16]}…"


class ChainVerifier:
    """Checks records as they come, case by case; `finish` reports what only the end shows.

    Give it the records in seq order (the log's order). Each defect is reported once,
    at the record where it shows: an edited record (its hash no longer matches its
    content), records of a case that come in the wrong order (a swapped pair is one
    finding, named at the record that comes late), a missing record (its case skips
    a version; known only at the end, when nothing filled the gap), a `prev_hash`
    that is not its predecessor's hash, a case_version seen twice, a seq not after
    the one before it. The chain cannot show the loss of a case's latest records or
    of a whole case.
    """

    def __init__(self, partial: bool = False) -> None:
        # partial: the records begin after the log's start (an export --from-seq), so a
        # case's first record here may have predecessors that are simply not included.
        self.partial = partial
        self._cases: dict[str, _Case] = {}
        self._last_seq = 0
        self.records = 0
        self.gaps: list[tuple[str, int | None, int | None]] = []  # (case, seq before, seq after)

    @property
    def cases(self) -> int:
        return len(self._cases)

    def check(self, record: Record) -> list[ChainBreak]:
        self.records += 1
        breaks: list[ChainBreak] = []
        case_id = record.event.case_id
        version = record.case_version
        seq = None if record.seq is UNSET else record.seq

        def flag(kind: str, problem: str) -> None:
            breaks.append(ChainBreak(seq, case_id, version, problem, kind))

        if seq is not None:
            if seq <= self._last_seq:
                flag("out_of_order", f"out of order: seq {seq} comes after seq {self._last_seq}")
            self._last_seq = max(self._last_seq, seq)

        expected_hash = record_hash(record)
        if expected_hash != record.hash:
            flag(
                "edited",
                f"content does not match its hash: stored {_short(record.hash)}, "
                f"recomputed {_short(expected_hash)}",
            )

        case = self._cases.get(case_id)
        if case is None:
            case = self._cases[case_id] = _Case()
            if self.partial:
                case.version, case.hash = version - 1, record.prev_hash
        if version <= case.version or version in case.pending:
            flag("duplicate", f"case_version {version} appears again")
        elif version > case.version + 1:
            case.pending[version] = (seq, record.prev_hash, record.hash)
            if case.ahead is None or version > case.ahead[0]:
                case.ahead = (version, seq)
        else:
            if case.ahead is not None and case.ahead[0] > version:
                later, later_seq = case.ahead
                flag(
                    "reordered",
                    f"reordered: case_version {version} comes after case_version {later}"
                    + (f" (seq {later_seq})" if later_seq is not None else ""),
                )
            breaks += self._link(case, case_id, version, seq, record.prev_hash, record.hash)
            breaks += self._drain(case, case_id)
        return breaks

    def _link(
        self, case: _Case, case_id: str, version: int, seq: int | None, prev_hash: str, digest: str
    ) -> list[ChainBreak]:
        """Append the next version to the case's verified chain."""
        breaks = []
        if prev_hash != case.hash:
            before = f"case_version {case.version}" if case.version else "the case's start"
            breaks.append(
                ChainBreak(
                    seq,
                    case_id,
                    version,
                    f"prev_hash {_short(prev_hash)} is not the hash of {before} ({_short(case.hash)})",
                    "broken_link",
                )
            )
        case.version, case.hash, case.seq = version, digest, seq
        if case.ahead is not None and case.ahead[0] <= version:
            case.ahead = None
        return breaks

    def _drain(self, case: _Case, case_id: str) -> list[ChainBreak]:
        breaks = []
        while case.version + 1 in case.pending:
            version = case.version + 1
            seq, prev_hash, digest = case.pending.pop(version)
            breaks += self._link(case, case_id, version, seq, prev_hash, digest)
        return breaks

    def finish(self) -> list[ChainBreak]:
        """The gaps nothing filled: records missing before the next one of their case."""
        breaks = []
        for case_id, case in self._cases.items():
            while case.pending:
                version = min(case.pending)
                seq, _, digest = case.pending.pop(version)
                missing = version - case.version - 1
                self.gaps.append((case_id, case.seq, seq))
                after = f" (seq {case.seq})" if case.seq is not None else ""
                breaks.append(
                    ChainBreak(
                        seq,
                        case_id,
                        version,
                        f"{missing} record(s) missing before it: case_version {version} follows "
                        f"{case.version}{after}",
                        "missing",
                    )
                )
                case.version, case.hash, case.seq = version, digest, seq  # the link cannot be checked
                breaks += self._drain(case, case_id)
        breaks.sort(key=lambda b: (b.seq is None, b.seq or 0))
        return breaks


def verify_chain(records: Iterable[Record]) -> Iterator[ChainBreak]:
    verifier = ChainVerifier()
    for record in records:
        yield from verifier.check(record)
    yield from verifier.finish()
