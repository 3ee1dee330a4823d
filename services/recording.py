"""The recorder's core: decide each submitted event, chain it, append it to the log.

What the recorder knows of the log (case heads, event ids) it reads from the log
itself: all of it at start, then by following the log. That knowledge may lag
behind the log (another recorder may just have written); JetStream corrects it:

- every case's first record in an append carries
  `Nats-Expected-Last-Subject-Sequence` (the seq of the case's last record, 0 for
  a new case), so a stale head is refused (10071) instead of forking the chain;
- every record carries `Nats-Msg-Id: <event_id>`, so within the duplicate window a
  second copy is refused (10201 in a batch) even before the follower has seen it;
- beyond the window, idempotency comes from the index, which holds every
  event_id of the log.

A refusal from JetStream, a timeout, or a rejection that rests on something being
absent (`unknown_case`, `unknown_target`, a too-new `expected_version`) sends the
recorder to catch up with the head of the log before it decides again.

The events of one submission are appended as one JetStream atomic batch: all of
them or none, with one acknowledgement (a single event as an ordinary publish,
which is atomic by itself).

Group commit: small submissions of several events that are decided while another
is being appended wait for it, then go together as the next batch (`_GroupCommit`). Their
cases are disjoint (each submission holds its cases' locks until its records are
acknowledged), so every record's expected subject sequence still holds; the batch
is all or none for each of them. nats-server stages every atomic batch on disk with
four fsyncs whatever its size, so under load one batch for many submissions spares
most of its work. A group the log refuses sends each member back to decide again
and append alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from schemas.dates import utc_now_rfc3339, utc_today
from schemas.errors import Code, Rejected
from schemas.events import AMENDMENT_TYPES, CaseOpened, EventBase, canonical_bytes
from schemas.intake import SubmitReply, SubmitResult, peek_event_id, split_submission
from schemas.record import GENESIS, Record, chain_hash, decode_record, record_body
from schemas.validation import decode_event
from services import subjects
from services.log import read_log, stream_state

log = logging.getLogger("casetrail.recorder")

MAX_ATTEMPTS = 30
WRONG_LAST_SEQUENCE = 10071
BATCH_DUPLICATE_ID = 10201
HEADER_LIMIT = 1000
# Gaps up to this size are read with direct gets; longer ones with an ordered consumer.
DIRECT_GET_LIMIT = 256
# Appends of two records up to fewer than this go through group commit; larger ones
# amortise a batch's cost by themselves, and single records are ordinary publishes,
# which nats-server takes in parallel more cheaply than as one batch (measured with
# 16 submissions in flight: of single events, ~1,000 events/s alone, ~830 grouped;
# of ten events, ~2,050 alone, 4,800-6,500 grouped).
GROUP_BELOW = 100
# Records in one group at most (nats-server refuses atomic batches of more than 1,000).
GROUP_LIMIT = 1000


class ServiceUnavailable(Exception):
    """The log could not be written now; the submission may be retried unchanged."""


# --- what the recorder knows of the log -------------------------------------------


class _Keys(msgspec.Struct):
    type: str
    event_id: str
    case_id: str


class _IndexView(msgspec.Struct):
    case_version: int
    hash: str
    event: _Keys


_index_decoder = msgspec.json.Decoder(_IndexView)


class CaseHead:
    """The last record of a case: its stream seq, case_version and hash."""

    __slots__ = ("seq", "version", "hash")

    def __init__(self, seq: int, version: int, hash: str) -> None:
        self.seq = seq
        self.version = version
        self.hash = hash


class LogIndex:
    """Case heads and every event id of the log up to `position`.

    The recorder notes its own appends as they are acknowledged; what other
    recorders appended it reads from the log when it catches up. Ranges it
    appended beyond a gap wait in `_own` until the gap is read.
    """

    def __init__(self) -> None:
        self.heads: dict[str, CaseHead] = {}
        # event_id -> (seq, case_id, is a fact event: a valid correction target)
        self.ids: dict[str, tuple[int, str, bool]] = {}
        self.position = 0
        self._own: dict[int, int] = {}

    def note(self, seq: int, case_id: str, event_id: str, is_fact: bool, version: int, hash: str) -> None:
        head = self.heads.get(case_id)
        if head is None or seq > head.seq:
            self.heads[case_id] = CaseHead(seq, version, hash)
        self.ids[event_id] = (seq, case_id, is_fact)

    def apply(self, batch: list[tuple[int, bytes]]) -> None:
        """Records read from the log."""
        for seq, data in batch:
            view = _index_decoder.decode(data)
            event = view.event
            self.note(
                seq,
                event.case_id,
                event.event_id,
                event.type not in _AMENDMENT_TAGS,
                view.case_version,
                view.hash,
            )

    def appended(self, first: int, last: int) -> None:
        """Seqs `first`..`last` are this recorder's own, already noted."""
        self._own[first] = last
        self._advance()

    def read_through(self, seq: int) -> None:
        """Everything up to `seq` has been read from the log."""
        self.position = max(self.position, seq)
        self._advance()

    def unread(self, first: int, last: int) -> list[int]:
        """The seqs in first..last that are neither read nor our own."""
        own = sorted((lo, hi) for lo, hi in self._own.items() if hi >= first and lo <= last)
        missing, seq = [], first
        for lo, hi in own:
            missing.extend(range(seq, min(lo, last + 1)))
            seq = max(seq, hi + 1)
        missing.extend(range(seq, last + 1))
        return missing

    def _advance(self) -> None:
        moved = True
        while moved and self._own:
            moved = False
            for first in [f for f in self._own if f <= self.position + 1]:
                self.position = max(self.position, self._own.pop(first))
                moved = True


_AMENDMENT_TAGS = frozenset(t.__struct_config__.tag for t in AMENDMENT_TYPES)


# --- deciding ------------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    index: int
    raw: bytes
    event: EventBase
    canonical: bytes
    is_fact: bool


@dataclass(slots=True)
class _Planned:
    item: _Item
    case_version: int
    hash: str
    body: bytes
    expected_subject_seq: int | None  # set on the first record of its case in the batch


@dataclass
class _Plan:
    appends: list[_Planned] = field(default_factory=list)
    results: dict[int, SubmitResult] = field(default_factory=dict)
    rejected: dict[int, Rejected] = field(default_factory=dict)
    # Rejections that may only reflect a lagging index.
    doubtful: bool = False


def _rejected(event_id: str | None, exc: Rejected) -> SubmitResult:
    return SubmitResult(event_id=event_id, status="rejected", code=exc.code.value, message=exc.message)


class Recorder:
    """Records submissions on behalf of publishers; one per process, any number per log."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        clock: Callable[[], str] = utc_now_rfc3339,
        today: Callable[[], object] = utc_today,
        publish_timeout: float = 10.0,
    ) -> None:
        self.nc = nc
        self.js = js
        self.index = LogIndex()
        self._clock = clock
        self._today = today
        self._publish_timeout = publish_timeout
        self._busy_cases: set[str] = set()
        self._cases_changed = asyncio.Condition()
        self._catching_up = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_s = 30.0
        self._fresh_at = 0.0
        self._group = _GroupCommit(self._append)

    # -- life cycle

    async def start(self) -> None:
        """Read the whole log into the index; then keep it fresh."""
        info = await self.js.stream_info(subjects.LOG_STREAM)
        window = info.config.duplicate_window or 120.0
        # Catch up well within the duplicate window: what another recorder wrote
        # is then in the index before JetStream forgets its Nats-Msg-Id.
        self._refresh_s = min(30.0, window / 4)
        await self.catch_up(timeout=3600)
        # The index is long-lived and acyclic: keep the collector from re-walking it.
        gc.freeze()
        self._refresher = asyncio.create_task(self._refresh(), name="recorder-refresh")
        log.info("recorder ready: %d records, %d cases", len(self.index.ids), len(self.index.heads))

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.catch_up()
            except ServiceUnavailable as exc:
                log.warning("%s", exc)

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def catch_up(self, timeout: float | None = None) -> None:
        """Read into the index whatever others appended up to the log's current head."""
        try:
            async with self._catching_up, asyncio.timeout(timeout or self._publish_timeout):
                started = time.monotonic()
                head = (await stream_state(self.nc)).last_seq
                first = self.index.position + 1
                missing = self.index.unread(first, head)
                if len(missing) <= DIRECT_GET_LIMIT:
                    self.index.apply(await self._fetch(missing))
                else:
                    async for batch in read_log(self.js, first, head):
                        self.index.apply(batch)
                self.index.read_through(head)
                self._fresh_at = started
        except (TimeoutError, NatsTimeout) as exc:
            raise ServiceUnavailable(f"could not catch up with the log: {exc!r}") from None

    async def _ensure_fresh(self) -> None:
        if time.monotonic() - self._fresh_at > self._refresh_s:
            await self.catch_up()

    async def _fetch(self, seqs: list[int]) -> list[tuple[int, bytes]]:
        async def one(seq: int) -> tuple[int, bytes]:
            msg = await self.js.get_msg(subjects.LOG_STREAM, seq=seq, direct=True)
            return seq, msg.data  # type: ignore[return-value]

        return list(await asyncio.gather(*(one(s) for s in seqs)))

    # -- submissions

    async def submit(self, publisher: str, body: bytes) -> SubmitReply:
        """Decide every event of one request; the reply has one result per event, in order."""
        submission = split_submission(body)
        raws: list[bytes] = [bytes(r) for r in submission.events]
        results: list[SubmitResult | None] = [None] * len(raws)
        refusals: dict[int, Rejected] = {}
        valid: list[_Item] = []
        if submission.refused is not None:
            for i, raw in enumerate(raws):
                refusals[i] = submission.refused
        else:
            today = self._today()
            for i, raw in enumerate(raws):
                try:
                    event = decode_event(raw, today)  # type: ignore[arg-type]
                except Rejected as exc:
                    refusals[i] = exc
                else:
                    fact = not isinstance(event, AMENDMENT_TYPES)
                    valid.append(_Item(i, raw, event, canonical_bytes(event), fact))
        if valid:
            recorded, late_refusals = await self._record(publisher, valid)
            for i, result in recorded.items():
                results[i] = result
            refusals.update(late_refusals)
        for i, exc in refusals.items():
            results[i] = _rejected(peek_event_id(raws[i]), exc)
        if refusals:
            await self._store_rejects(publisher, [(raws[i], refusals[i], results[i]) for i in sorted(refusals)])
        return SubmitReply(results=results)  # type: ignore[arg-type]

    async def _record(
        self, publisher: str, items: list[_Item]
    ) -> tuple[dict[int, SubmitResult], dict[int, Rejected]]:
        cases = {item.event.case_id for item in items}
        await self._ensure_fresh()
        async with self._case_locks(cases):
            caught_up = False
            grouped = True  # until the log refuses an append: then alone
            for attempt in range(MAX_ATTEMPTS):
                plan = await self._plan(publisher, items)
                if plan.doubtful and not caught_up:
                    await self.catch_up()
                    caught_up = True
                    continue
                if not plan.appends:
                    return plan.results, plan.rejected
                try:
                    if grouped and 1 < len(plan.appends) < GROUP_BELOW:
                        first_seq = await self._group.append(plan.appends)
                    else:
                        first_seq = await self._append(plan.appends)
                except _Retry as why:
                    log.debug("append retried (%s), attempt %d", why, attempt + 1)
                    grouped = False
                    await asyncio.sleep(random.uniform(0, 0.002 * attempt))
                    await self.catch_up()
                    caught_up = True
                    continue
                last_seq = first_seq + len(plan.appends) - 1
                for seq, planned in enumerate(plan.appends, first_seq):
                    item = planned.item
                    event_id: str = item.event.event_id  # type: ignore[assignment]
                    self.index.note(
                        seq, item.event.case_id, event_id, item.is_fact, planned.case_version, planned.hash
                    )
                    plan.results[item.index] = SubmitResult(
                        event_id=event_id, status="accepted", seq=seq, case_version=planned.case_version
                    )
                self.index.appended(first_seq, last_seq)
                # Duplicates of events first seen in this very submission point at them.
                for i, result in plan.results.items():
                    if result.status == "duplicate" and result.seq is None:
                        original = self.index.ids[result.event_id][0]  # type: ignore[index]
                        plan.results[i] = SubmitResult(
                            event_id=result.event_id,
                            status="duplicate",
                            seq=original,
                            case_version=result.case_version,
                        )
                return plan.results, plan.rejected
        raise ServiceUnavailable(f"the log refused the append {MAX_ATTEMPTS} times")

    @contextlib.asynccontextmanager
    async def _case_locks(self, cases: set[str]) -> AsyncIterator[None]:
        """Hold every case of a submission at once (all or none: no lock-order deadlock)."""
        async with self._cases_changed:
            await self._cases_changed.wait_for(lambda: self._busy_cases.isdisjoint(cases))
            self._busy_cases.update(cases)
        try:
            yield
        finally:
            async with self._cases_changed:
                self._busy_cases.difference_update(cases)
                self._cases_changed.notify_all()

    async def _stored(self, seqs: set[int]) -> dict[int, Record]:
        async def one(seq: int) -> tuple[int, Record]:
            msg = await self.js.get_msg(subjects.LOG_STREAM, seq=seq, direct=True)
            return seq, decode_record(msg.data, seq)  # type: ignore[arg-type]

        return dict(await asyncio.gather(*(one(s) for s in seqs)))

    async def _plan(self, publisher: str, items: list[_Item]) -> _Plan:
        plan = _Plan()
        index = self.index
        recorded_at = self._clock()  # one atomic append, one recording time
        known = {item.event.event_id for item in items} & index.ids.keys()
        stored = await self._stored({index.ids[e][0] for e in known}) if known else {}
        stored_canonical = {
            rec.event.event_id: (rec, canonical_bytes(rec.event)) for rec in stored.values()
        }
        # The draft: heads and ids as they will be once this plan is appended.
        heads: dict[str, tuple[int, str]] = {}
        first_seq: dict[str, int] = {}
        drafted: dict[str, tuple[bytes, str, bool, int]] = {}
        for item in items:
            event = item.event
            event_id: str = event.event_id  # type: ignore[assignment]
            case_id = event.case_id
            # Duplicate check: before any case rule.
            if event_id in drafted:
                canonical, _, _, version = drafted[event_id]
                if canonical == item.canonical:
                    plan.results[item.index] = SubmitResult(
                        event_id=event_id, status="duplicate", case_version=version
                    )
                else:
                    plan.rejected[item.index] = _conflict(event_id)
                continue
            if event_id in stored_canonical:
                record, canonical = stored_canonical[event_id]
                if canonical == item.canonical:
                    plan.results[item.index] = SubmitResult(
                        event_id=event_id,
                        status="duplicate",
                        seq=record.seq,  # type: ignore[arg-type]
                        case_version=record.case_version,
                    )
                else:
                    plan.rejected[item.index] = _conflict(event_id)
                continue
            if case_id in heads:
                version, prev_hash = heads[case_id]
                exists = True
            elif case_id in index.heads:
                head = index.heads[case_id]
                version, prev_hash = head.version, head.hash
                first_seq[case_id] = head.seq
                exists = True
            else:
                version, prev_hash, exists = 0, GENESIS, False
            problem = self._case_rule(event, exists, version, drafted)
            if problem is not None:
                plan.rejected[item.index], doubtful = problem
                plan.doubtful = plan.doubtful or doubtful
                continue
            if not exists:
                first_seq.setdefault(case_id, 0)
            version += 1
            digest = chain_hash(prev_hash, version, recorded_at, publisher, item.canonical)
            body = record_body(recorded_at, publisher, version, prev_hash, digest, item.canonical)
            expected = first_seq.pop(case_id, None)
            plan.appends.append(_Planned(item, version, digest, body, expected))
            heads[case_id] = (version, digest)
            drafted[event_id] = (item.canonical, case_id, item.is_fact, version)
        return plan

    def _case_rule(
        self, event: EventBase, exists: bool, version: int, drafted: dict[str, tuple[bytes, str, bool, int]]
    ) -> tuple[Rejected, bool] | None:
        """The case rules, in EVENTS.md's order; with whether a lagging index could explain it."""
        case_id = event.case_id
        if not exists and not isinstance(event, CaseOpened):
            return Rejected(
                Code.UNKNOWN_CASE,
                f"`$.case_id`: no case {case_id!r} in the log; a case begins with case_opened",
            ), True
        if exists and isinstance(event, CaseOpened):
            return Rejected(Code.CASE_EXISTS, f"`$.case_id`: the case {case_id!r} is already open"), False
        if isinstance(event, AMENDMENT_TYPES):
            target = event.target_event_id
            found = drafted.get(target)
            entry = (found[1], found[2]) if found else None
            if entry is None and target in self.index.ids:
                _, target_case, is_fact = self.index.ids[target]
                entry = (target_case, is_fact)
            if target == event.event_id or entry is None or entry[0] != case_id:
                return Rejected(
                    Code.UNKNOWN_TARGET,
                    f"`$.target_event_id`: no event {target!r} in case {case_id!r}",
                ), entry is None
            if not entry[1]:
                return Rejected(
                    Code.UNKNOWN_TARGET,
                    f"`$.target_event_id`: {target!r} is a correction or retraction; "
                    "amend the original event instead",
                ), False
        expected = event.expected_version
        if expected is not None and expected != version:
            return Rejected(
                Code.VERSION_CONFLICT,
                f"`$.expected_version`: the case holds {version} events, not {expected}",
            ), expected > version
        return None

    async def _append(self, appends: list[_Planned]) -> int:
        """Publish the records as one atomic batch; return the seq of the first."""
        if len(appends) == 1:
            return await self._append_one(appends[0])
        batch_id = uuid.uuid4().hex
        *body, last = appends
        # The records before the commit are not acknowledged one by one.
        if body and PREBUILT_PUBLISH and self.nc.is_connected:
            await self.nc._send_command(  # type: ignore[attr-defined]
                b"".join(
                    _hpub(subjects.log(p.item.event.case_id), _batch_headers(p, batch_id, n), p.body)
                    for n, p in enumerate(body, 1)
                )
            )
        else:
            for n, p in enumerate(body, 1):
                await self.nc.publish(
                    subjects.log(p.item.event.case_id), p.body, headers=_header_dict(p, batch_id, n)
                )
        headers = _header_dict(last, batch_id, len(appends))
        headers["Nats-Batch-Commit"] = "1"
        ack = await self._acknowledged(last, headers)
        if ack.count is not None and ack.count != len(appends):
            raise ServiceUnavailable(f"JetStream stored {ack.count} of {len(appends)} records")
        return ack.seq - len(appends) + 1

    async def _append_one(self, planned: _Planned) -> int:
        """One record is atomic by itself: an ordinary publish, without a batch.

        (nats-server stages an atomic batch of a file stream on disk, with four
        fsyncs, whatever its size: ~4 ms of server CPU saved per one-event submission.)
        """
        ack = await self._acknowledged(planned, _record_headers(planned))
        if ack.duplicate:
            # Its Nats-Msg-Id is in the log already (the index lags): decide again.
            raise _Retry(f"{planned.item.event.event_id!r} is already in the log")
        return ack.seq

    async def _acknowledged(self, planned: _Planned, headers: dict[str, str]) -> _Ack:
        """Publish one record and wait for JetStream's acknowledgement (checked)."""
        try:
            reply = await self.nc.request(
                subjects.log(planned.item.event.case_id),
                planned.body,
                headers=headers,
                timeout=self._publish_timeout,
            )
        except NatsTimeout:
            raise _Retry("no acknowledgement in time") from None
        return _checked(reply.data)

    async def _store_rejects(
        self, publisher: str, rejected: list[tuple[bytes, Rejected, SubmitResult | None]]
    ) -> None:
        """Keep every refused submission with its code, message and original bytes."""
        received_at = self._clock()
        futures = []
        for raw, exc, result in rejected:
            headers = {
                "Casetrail-Code": exc.code.value,
                "Casetrail-Message": _header_value(exc.message),
                "Casetrail-Publisher": publisher,
                "Casetrail-Received-At": received_at,
            }
            if result is not None and result.event_id:
                headers["Casetrail-Event-Id"] = _header_value(result.event_id)
            futures.append(
                await self.js.publish_async(
                    subjects.rejects(exc.code.value, publisher), raw, headers=headers
                )
            )
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.error("a rejected submission could not be kept in %s: %r", subjects.REJECTS_STREAM, outcome)


# nats-py builds header bytes from a dict, checking every key and value; for
# the recorder's own headers (ids match [A-Za-z0-9._:-]) that was the largest
# single cost of an append. The messages before a batch's commit are therefore
# written as prebuilt HPUB commands in one go; the commit is an ordinary request.


def _batch_headers(planned: _Planned, batch_id: str, n: int) -> bytes:
    head = (
        f"NATS/1.0\r\nNats-Msg-Id: {planned.item.event.event_id}\r\n"
        f"Nats-Batch-Id: {batch_id}\r\nNats-Batch-Sequence: {n}\r\n"
    )
    if planned.expected_subject_seq is not None:
        head += f"Nats-Expected-Last-Subject-Sequence: {planned.expected_subject_seq}\r\n"
    return (head + "\r\n").encode()


def _hpub(subject: str, headers: bytes, payload: bytes) -> bytes:
    return (
        f"HPUB {subject} {len(headers)} {len(headers) + len(payload)}\r\n".encode()
        + headers
        + payload
        + b"\r\n"
    )


# Where nats-py lacks it (or while reconnecting), the checked publish is used.
PREBUILT_PUBLISH = hasattr(Client, "_send_command")


def _record_headers(planned: _Planned) -> dict[str, str]:
    """What every appended record carries: its event id (dedup) and, first of its
    case in an append, the subject sequence it expects."""
    headers = {"Nats-Msg-Id": planned.item.event.event_id}
    if planned.expected_subject_seq is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(planned.expected_subject_seq)
    return headers  # type: ignore[return-value]


def _header_dict(planned: _Planned, batch_id: str, n: int) -> dict[str, str]:
    return {**_record_headers(planned), "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)}


class _Retry(Exception):
    pass


class _GroupCommit:
    """One append of small plans in flight at a time; those that arrive meanwhile go next, together.

    Alone (light load) a plan is appended at once, as it would be without this.
    `append` returns the seq of the plan's first record. The plans of a group hold
    disjoint cases (see the module's docstring). If the group's append fails, every
    member gets `_Retry` when the group had others in it (the failure may be
    another member's), or the failure itself when it was alone.
    """

    def __init__(self, send: Callable[[list[_Planned]], Awaitable[int]]) -> None:
        self._send = send
        self._waiting: list[tuple[list[_Planned], asyncio.Future[int]]] = []
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, appends: list[_Planned]) -> int:
        if not self._busy:
            self._busy = True
            try:
                return await self._send(appends)
            finally:
                self._next()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((appends, future))
        return await future

    def _next(self) -> None:
        """The append in flight has ended: send what waits, or be idle."""
        group, size = [], 0
        while self._waiting and size + len(self._waiting[0][0]) <= GROUP_LIMIT:
            appends, future = self._waiting.pop(0)
            if not future.done():  # (done: its submission was cancelled)
                group.append((appends, future))
                size += len(appends)
        self._busy = bool(group)
        if group:
            task = asyncio.get_running_loop().create_task(self._commit(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commit(self, group: list[tuple[list[_Planned], asyncio.Future[int]]]) -> None:
        try:
            first = await self._send([p for appends, _ in group for p in appends])
        except asyncio.CancelledError:
            for _, future in group:
                future.cancel()
            raise
        except Exception as exc:
            if len(group) > 1 and isinstance(exc, (_Retry, ServiceUnavailable)):
                exc = _Retry(f"the group's append failed ({exc})")
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
        else:
            for appends, future in group:
                if not future.done():
                    future.set_result(first)
                first += len(appends)
        finally:
            self._next()


class _Ack(msgspec.Struct):
    seq: int = 0
    count: int | None = None
    duplicate: bool = False
    error: dict | None = None


_ack_decoder = msgspec.json.Decoder(_Ack)


def _checked(reply: bytes) -> _Ack:
    """JetStream's acknowledgement of an append; a refusal raises (_Retry when worth it)."""
    ack = _ack_decoder.decode(reply)
    if ack.error is not None:
        code = ack.error.get("err_code")
        if code in (WRONG_LAST_SEQUENCE, BATCH_DUPLICATE_ID):
            raise _Retry(ack.error.get("description", code))
        raise ServiceUnavailable(f"JetStream refused the append: {ack.error}")
    return ack


def _conflict(event_id: str) -> Rejected:
    return Rejected(
        Code.EVENT_ID_CONFLICT,
        f"`$.event_id`: {event_id!r} is already recorded with other content; "
        "choose a new event_id, or correct the recorded event with event_corrected",
    )


def _header_value(text: str) -> str:
    """Header values are one line; keep them short and printable."""
    flat = " ".join(text.split())
    return flat[:HEADER_LIMIT]


__all__ = ["CaseHead", "LogIndex", "Recorder", "ServiceUnavailable"]
