"""`casetrail log stats`: what the log holds, read from the log itself."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import msgspec
from nats.aio.client import Client

from services import subjects
from services.log import read_log, stream_state


class LogStats(msgspec.Struct, kw_only=True):
    records: int
    cases: int
    first_seq: int
    last_seq: int
    first_recorded_at: str | None = None
    last_recorded_at: str | None = None
    by_type: dict[str, int]
    rejects_by_code: dict[str, int]
    by_case: dict[str, int] = {}  # records per case


class _Type(msgspec.Struct):
    type: str


class _TypeOnly(msgspec.Struct):
    recorded_at: str
    event: _Type


_type_decoder = msgspec.json.Decoder(_TypeOnly)


async def collect_stats(nc: Client, progress: Callable[[int], None] | None = None) -> LogStats:
    js = nc.jetstream()
    state = await stream_state(nc, subjects.LOG_STREAM)
    by_type: Counter[str] = Counter()
    first_at = last_at = None
    if state.messages:
        async for batch in read_log(js, state.first_seq, state.last_seq):
            for _, data in batch:
                head = _type_decoder.decode(data)
                by_type[head.event.type] += 1
                last_at = head.recorded_at
                if first_at is None:
                    first_at = last_at
            if progress is not None:
                progress(len(batch))
    cases = await stream_state(nc, subjects.LOG_STREAM, subjects_filter=subjects.LOG_ALL)
    by_case = {
        subject[len(subjects.LOG_PREFIX) + 1 :]: count for subject, count in (cases.subjects or {}).items()
    }
    rejects = await stream_state(nc, subjects.REJECTS_STREAM, subjects_filter=subjects.REJECTS_ALL)
    by_code: Counter[str] = Counter()
    for subject, count in (rejects.subjects or {}).items():
        by_code[subject.split(".")[2]] += count
    return LogStats(
        records=state.messages,
        cases=state.num_subjects,
        first_seq=state.first_seq if state.messages else 0,
        last_seq=state.last_seq,
        first_recorded_at=first_at,
        last_recorded_at=last_at,
        by_type=dict(sorted(by_type.items())),
        rejects_by_code=dict(sorted(by_code.items())),
        by_case=dict(sorted(by_case.items())),
    )
