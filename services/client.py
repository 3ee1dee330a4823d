"""The publisher client for ingestion services: submit events, get typed results.

    async with await Publisher.connect(settings, "ovd-info") as pub:
        result = await pub.submit(event)            # one event
        results = await pub.submit_many(events)     # any number, batched

Events may be `schemas` Structs, dicts or raw JSON bytes. An event without an
`event_id` gets one (a UUIDv7) before its first attempt, so every retry reuses it;
retries are therefore always safe: the recorder answers `duplicate` for what it
already has. Batches are split by count (at most 1,000) and by size (what fits in
one NATS message) and sent on parallel lanes, all events of a case on the same
lane, so a case's events are recorded in the order given.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas.errors import Code
from schemas.events import EventBase
from schemas.ids import uuid7
from schemas.intake import SubmitResult, reply_decoder
from schemas.validation import MAX_BATCH_EVENTS
from services import subjects
from services.connection import connect
from services.settings import Settings

PUBLISHER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_BATCH = 500
ENVELOPE_OVERHEAD = len(b'{"events":[]}')


class PublisherError(Exception):
    """The recorder could not be reached or kept refusing service; nothing was lost."""


class _Keys(msgspec.Struct):
    event_id: object = None
    case_id: object = None


_keys = msgspec.json.Decoder(_Keys)
_service_error = msgspec.json.Decoder(dict)
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class Prepared:
    """One event as it will be sent: its bytes, id and case (when they can be read)."""

    body: bytes
    event_id: str | None
    case_id: str | None
    # Not JSON at all: sent on its own, since it cannot sit inside a batch's array.
    alone: bool = False


def prepare(event: EventBase | dict | bytes) -> Prepared:
    """Encode an event, giving it an event_id when it has none."""
    if isinstance(event, EventBase):
        if event.event_id is msgspec.UNSET:
            event = msgspec.structs.replace(event, event_id=uuid7())
        return Prepared(_encoder.encode(event), event.event_id, event.case_id)  # type: ignore[arg-type]
    if isinstance(event, dict):
        if not event.get("event_id"):
            event = {**event, "event_id": uuid7()}
        body = _encoder.encode(event)
        return Prepared(body, _text(event.get("event_id")), _text(event.get("case_id")))
    body = bytes(event)
    try:
        keys = _keys.decode(body)
    except msgspec.ValidationError:
        return Prepared(body, None, None)  # JSON, but not an object: the recorder says so
    except msgspec.DecodeError:
        return Prepared(body, None, None, alone=True)
    return Prepared(body, _text(keys.event_id), _text(keys.case_id))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def batches(
    events: Iterable[tuple[int, Prepared]], max_events: int, max_bytes: int
) -> Iterable[list[tuple[int, Prepared]]]:
    """Consecutive runs of (position, event) whose batch body fits in `max_bytes`."""
    batch: list[tuple[int, Prepared]] = []
    size = ENVELOPE_OVERHEAD
    for item in events:
        if item[1].alone:
            if batch:
                yield batch
                batch, size = [], ENVELOPE_OVERHEAD
            yield [item]
            continue
        extra = len(item[1].body) + 1
        if batch and (len(batch) >= max_events or size + extra > max_bytes):
            yield batch
            batch, size = [], ENVELOPE_OVERHEAD
        batch.append(item)
        size += extra
    if batch:
        yield batch


def _batch_body(batch: list[tuple[int, Prepared]]) -> bytes:
    if batch[0][1].alone:
        return batch[0][1].body
    return b'{"events":[' + b",".join(e.body for _, e in batch) + b"]}"


class Publisher:
    """Submits events as one publisher identity (`casetrail.intake.<name>`)."""

    def __init__(
        self,
        nc: Client,
        name: str,
        *,
        timeout: float = 10.0,
        attempts: int = 12,
        batch_size: int = DEFAULT_BATCH,
        in_flight: int = 4,
        owns_connection: bool = False,
    ) -> None:
        if not PUBLISHER_NAME.fullmatch(name):
            raise ValueError(f"publisher name {name!r} must match {PUBLISHER_NAME.pattern}")
        self.nc = nc
        self.name = name
        self.subject = subjects.intake(name)
        self.timeout = timeout
        self.attempts = attempts
        self.batch_size = min(batch_size, MAX_BATCH_EVENTS)
        self.in_flight = in_flight
        self._owns = owns_connection

    @classmethod
    async def connect(cls, settings: Settings, name: str, **options: object) -> Publisher:
        nc = await connect(settings, f"casetrail-publisher-{name}")
        options.setdefault("timeout", settings.request_timeout_s)
        return cls(nc, name, owns_connection=True, **options)  # type: ignore[arg-type]

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            await self.nc.drain()

    @property
    def max_bytes(self) -> int:
        # What one NATS message may carry, less room for the protocol line.
        return max(64 * 1024, (self.nc.max_payload or 1024 * 1024) - 4096)

    async def submit(self, event: EventBase | dict | bytes) -> SubmitResult:
        prepared = prepare(event)
        oversized = self._oversized(prepared)
        if oversized is not None:
            return oversized
        (result,) = await self._request(prepared.body, 1)
        return result

    async def submit_batch(self, events: Iterable[EventBase | dict | bytes]) -> list[SubmitResult]:
        """Up to 1,000 events that fit in one message, decided in one request."""
        return await self.submit_many(events)

    async def submit_many(
        self,
        events: Iterable[EventBase | dict | bytes | Prepared],
        progress: Callable[[int], None] | None = None,
    ) -> list[SubmitResult]:
        """Any number of events; results in the order given."""
        prepared = [e if isinstance(e, Prepared) else prepare(e) for e in events]
        results: list[SubmitResult | None] = [None] * len(prepared)
        sendable: list[tuple[int, Prepared]] = []
        limit = self.max_bytes
        for i, event in enumerate(prepared):
            oversized = self._oversized(event, limit)
            if oversized is None:
                sendable.append((i, event))
            else:
                results[i] = oversized
        async for positions, batch_results in self._pipeline(sendable):
            for i, result in zip(positions, batch_results):
                results[i] = result
            if progress is not None:
                progress(len(positions))
        return results  # type: ignore[return-value]

    async def _pipeline(
        self, sendable: list[tuple[int, Prepared]]
    ) -> AsyncIterator[tuple[list[int], list[SubmitResult]]]:
        """Send batches on parallel lanes; all events of one case travel on one lane.

        A lane sends its batches one after another, so a case's events are decided
        in the order given; lanes share no case, so they need not wait for each other.
        """
        lanes: list[list[tuple[int, Prepared]]] = [[] for _ in range(self.in_flight)]
        for item in sendable:
            case = item[1].case_id
            lanes[zlib.crc32(case.encode()) % self.in_flight if case else 0].append(item)
        finished: asyncio.Queue[tuple[list[int], list[SubmitResult]] | BaseException] = asyncio.Queue()

        async def run(lane: list[tuple[int, Prepared]]) -> None:
            try:
                for batch in batches(lane, self.batch_size, self.max_bytes):
                    found = await self._request(_batch_body(batch), len(batch))
                    finished.put_nowait(([i for i, _ in batch], found))
            except BaseException as exc:  # handed to the consumer, who raises it
                finished.put_nowait(exc)

        tasks = [asyncio.create_task(run(lane)) for lane in lanes if lane]
        remaining = len(sendable)
        try:
            while remaining:
                got = await finished.get()
                if isinstance(got, BaseException):
                    raise got
                remaining -= len(got[0])
                yield got
        finally:
            for task in tasks:
                task.cancel()

    def _oversized(self, event: Prepared, limit: int | None = None) -> SubmitResult | None:
        if len(event.body) + ENVELOPE_OVERHEAD <= (limit or self.max_bytes):
            return None
        return SubmitResult(
            event_id=event.event_id,
            status="rejected",
            code=Code.TOO_LARGE.value,
            message=(
                f"`$`: the event is {len(event.body):,} bytes and cannot fit in one NATS "
                f"message ({self.max_bytes:,} bytes); it was not sent"
            ),
        )

    async def _request(self, body: bytes, expected: int) -> list[SubmitResult]:
        """One request, retried on timeouts and unavailability with the same bytes."""
        delay = 0.1
        last: str = ""
        for _ in range(self.attempts):
            try:
                reply = await self.nc.request(self.subject, body, timeout=self.timeout)
            except (NatsTimeout, NoRespondersError) as exc:
                last = "no recorder answered" if isinstance(exc, NoRespondersError) else "timed out"
            else:
                try:
                    results = reply_decoder.decode(reply.data).results
                except msgspec.DecodeError:
                    error = _service_error.decode(reply.data).get("error", {})
                    last = f"{error.get('code', 'error')}: {error.get('message', reply.data[:200])}"
                else:
                    if len(results) != expected:
                        raise PublisherError(
                            f"the recorder answered {len(results)} results for {expected} events"
                        )
                    return results
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise PublisherError(f"{self.subject}: {last} after {self.attempts} attempts")
