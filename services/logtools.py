"""`casetrail log tail | export | verify`: the log's records as EVENTS.md writes them.

A record line is `{"seq", "recorded_at", "recorded_by", "case_version", "prev_hash",
"hash", "event"}`: the stored body with its seq put first, byte for byte otherwise.
A Parquet export has one row per record: the same fields, `event` as its JSON text,
and `case_id` and `type` beside it for filtering.

`verify` recomputes every case's chain (`schemas.record.ChainVerifier`) from the log
or from an export. An export is first checked for its own order: two lines swapped
are one finding; then its records are verified in seq order, and a seq missing from
the export that no case's chain accounts for (a case's latest record, a whole case)
is named too.
"""

from __future__ import annotations

import mmap
from array import array
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from nats.aio.client import Client

from schemas.record import ChainBreak, ChainVerifier, Record, decode_record
from services import subjects
from services.log import LogReader, read_log, stream_state

FORMATS = ("jsonl", "parquet")
PARQUET_SCHEMA = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("recorded_at", pa.string(), nullable=False),
        pa.field("recorded_by", pa.string(), nullable=False),
        pa.field("case_version", pa.int64(), nullable=False),
        pa.field("prev_hash", pa.string(), nullable=False),
        pa.field("hash", pa.string(), nullable=False),
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("event", pa.string(), nullable=False),  # JSON, as stored
    ]
)

Batch = list[tuple[int, bytes]]


def record_line(seq: int, data: bytes) -> bytes:
    """The stored body (`{"recorded_at": ...}`) as a record line with its seq first."""
    return b'{"seq":%d,%s\n' % (seq, data[1:])


class _Head(msgspec.Struct):
    case_id: str
    type: str


class _Flat(msgspec.Struct):
    recorded_at: str
    recorded_by: str
    case_version: int
    prev_hash: str
    hash: str
    event: msgspec.Raw


_flat = msgspec.json.Decoder(_Flat)
_head = msgspec.json.Decoder(_Head)


def parquet_table(batch: Batch) -> pa.Table:
    columns: list[list] = [[] for _ in PARQUET_SCHEMA]
    for seq, data in batch:
        r = _flat.decode(data)
        event = bytes(r.event)
        head = _head.decode(event)
        for column, value in zip(
            columns,
            (seq, r.recorded_at, r.recorded_by, r.case_version, r.prev_hash, r.hash, head.case_id, head.type,
             event.decode()),
        ):
            column.append(value)
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, PARQUET_SCHEMA)], schema=PARQUET_SCHEMA
    )


async def export(
    nc: Client,
    out: BinaryIO | Path,
    *,
    fmt: str = "jsonl",
    from_seq: int = 1,
    to_seq: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the records from `from_seq` to `to_seq` (default: the log's end); return how many."""
    state = await stream_state(nc)
    last = state.last_seq if to_seq is None else min(to_seq, state.last_seq)
    first = max(from_seq, state.first_seq or 1)
    written = 0
    writer: pq.ParquetWriter | None = None
    if fmt == "parquet":
        writer = pq.ParquetWriter(out, PARQUET_SCHEMA, compression="zstd")
    try:
        if state.messages and first <= last:
            async for batch in read_log(nc.jetstream(), first, last):
                if writer is not None:
                    writer.write_table(parquet_table(batch))
                else:
                    assert not isinstance(out, Path)
                    out.write(b"".join(record_line(seq, data) for seq, data in batch))
                written += len(batch)
                if progress is not None:
                    progress(len(batch))
    finally:
        if writer is not None:
            writer.close()
        elif not isinstance(out, Path):
            out.flush()
    return written


async def tail(
    nc: Client, *, count: int = 10, case_id: str | None = None, follow: bool = False
) -> AsyncIterator[bytes]:
    """The last `count` records (of one case, with `case_id`) as record lines; then, with `follow`, every new one."""
    js = nc.jetstream()
    subject = subjects.log(case_id) if case_id else subjects.LOG_ALL
    state = await stream_state(nc)
    if case_id:
        try:
            last = (await js.get_last_msg(subjects.LOG_STREAM, subject)).seq or 0
        except Exception:  # no such subject yet
            last = 0
        start = 1
    else:
        last = state.last_seq
        start = max(state.first_seq or 1, last - count + 1)
    if last and state.messages:
        recent: list[tuple[int, bytes]] = []
        async for batch in read_log(js, start, last, subject=subject):
            recent = (recent + batch)[-count:] if count else []
        for seq, data in recent:
            yield record_line(seq, data)
    if follow:
        async with LogReader(js, last + 1, None, subject=subject) as reader:
            async for batch in reader.batches():
                for seq, data in batch:
                    yield record_line(seq, data)


class Verified(msgspec.Struct, kw_only=True):
    """What `log verify` found: how much it checked and every broken record."""

    source: str
    records: int
    cases: int
    first_seq: int | None
    last_seq: int | None
    broken: list[ChainBreak]


def _unexplained_gaps(seqs: array, verifier: ChainVerifier) -> list[ChainBreak]:
    """Seqs absent between the first and last one that no case's chain gap accounts for."""
    found = []
    windows = [(before or 0, after or 0) for _, before, after in verifier.gaps]
    for prev, seq in zip(seqs, seqs[1:]):
        for missing in range(prev + 1, seq):
            if not any(lo < missing < hi for lo, hi in windows):
                found.append(
                    ChainBreak(
                        missing, "", 0,
                        f"seq {missing} is missing: no record there (a case's latest record, or a "
                        "whole case, removed?)",
                        "missing",
                    )
                )
    return found


async def verify_log(nc: Client, progress: Callable[[int], None] | None = None) -> Verified:
    """Every case's chain, recomputed from the log itself."""
    state = await stream_state(nc)
    verifier = ChainVerifier()
    broken: list[ChainBreak] = []
    seqs = array("q")
    if state.messages:
        async for batch in read_log(nc.jetstream(), state.first_seq, state.last_seq):
            for seq, data in batch:
                seqs.append(seq)
                broken += verifier.check(decode_record(data, seq))
            if progress is not None:
                progress(len(batch))
    broken += verifier.finish()
    broken += _unexplained_gaps(seqs, verifier)
    return _verified(f"the log ({subjects.LOG_STREAM})", verifier, seqs, broken)


def _verified(source: str, verifier: ChainVerifier, seqs: array, broken: list[ChainBreak]) -> Verified:
    broken.sort(key=lambda b: (b.seq is None, b.seq or 0, b.case_version))
    return Verified(
        source=source,
        records=verifier.records,
        cases=verifier.cases,
        first_seq=min(seqs) if seqs else None,
        last_seq=max(seqs) if seqs else None,
        broken=broken,
    )


class _Seq(msgspec.Struct):
    seq: int


_seq_decoder = msgspec.json.Decoder(_Seq)
_record_line = msgspec.json.Decoder(Record)


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _parquet_records(path: Path) -> Iterator[tuple[int, Record | None, str | None]]:
    """(line, record, error) of a Parquet export, in its row order."""
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        for item in batch.to_pylist():
            row += 1
            try:
                body = msgspec.json.encode({k: item[k] for k in ("recorded_at", "recorded_by", "case_version",
                                                                 "prev_hash", "hash")})
                data = body[:-1] + b',"event":' + item["event"].encode() + b"}"
                yield row, decode_record(data, item["seq"]), None
            except (msgspec.DecodeError, KeyError, TypeError) as exc:
                yield row, None, str(exc)


def _jsonl_records(path: Path) -> Iterator[tuple[int, Record | None, str | None]]:
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start, line = 0, 0
            while start < len(data):
                end = data.find(b"\n", start)
                end = len(data) if end < 0 else end
                line += 1
                text = data[start:end].strip()
                start = end + 1
                if not text:
                    continue
                try:
                    record = _record_line.decode(text)
                    if record.seq is msgspec.UNSET:
                        raise msgspec.DecodeError("the record has no `seq`")
                    yield line, record, None
                except msgspec.DecodeError as exc:
                    yield line, None, str(exc)


def misplaced(seqs: list[int]) -> list[tuple[int, int]]:
    """Positions whose seq is not where seq order puts it: pairs swapped, or single (i, -1)."""
    ordered = sorted(seqs)
    wrong = [i for i, (a, b) in enumerate(zip(seqs, ordered)) if a != b]
    where = {seqs[i]: i for i in wrong}
    found, used = [], set()
    for i in wrong:
        if i in used:
            continue
        j = where.get(ordered[i], -1)
        if j >= 0 and j not in used and seqs[j] == ordered[i] and ordered[j] == seqs[i]:
            found.append((i, j))
            used |= {i, j}
        else:
            found.append((i, -1))
            used.add(i)
    return found


def verify_file(path: Path, progress: Callable[[int], None] | None = None) -> Verified:
    """Every case's chain, recomputed from an export (JSON Lines or Parquet)."""
    reading = _parquet_records(path) if _is_parquet(path) else _jsonl_records(path)
    records: list[Record] = []
    lines: list[int] = []
    broken: list[ChainBreak] = []
    for line, record, error in reading:
        if record is None:
            broken.append(ChainBreak(None, "", 0, f"line {line} is not a record: {error}", "malformed"))
            continue
        records.append(record)
        lines.append(line)
        if progress is not None and len(records) % 10_000 == 0:
            progress(10_000)
    seqs = [r.seq for r in records]  # type: ignore[misc]
    for i, j in misplaced(seqs):  # type: ignore[arg-type]
        a = records[i]
        if j < 0:
            broken.append(ChainBreak(a.seq, a.event.case_id, a.case_version,  # type: ignore[arg-type]
                                     f"line {lines[i]}: seq {a.seq} is out of seq order", "reordered"))
            continue
        if records[j].seq < a.seq:  # type: ignore[operator]
            i, j = j, i
        a, b = records[i], records[j]
        broken.append(ChainBreak(
            a.seq, a.event.case_id, a.case_version,  # type: ignore[arg-type]
            f"reordered: lines {lines[i]} and {lines[j]} are swapped (seq {a.seq} of {a.event.case_id} "
            f"and seq {b.seq} of {b.event.case_id})",
            "reordered",
        ))
    order = sorted(range(len(records)), key=seqs.__getitem__)
    first = seqs[order[0]] if order else None
    verifier = ChainVerifier(partial=first is not None and first > 1)
    for i in order:
        broken += verifier.check(records[i])
    broken += verifier.finish()
    ordered = array("q", (seqs[i] for i in order))
    broken += _unexplained_gaps(ordered, verifier)
    return _verified(str(path), verifier, ordered, broken)
