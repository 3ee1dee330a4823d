"""Hostile input at the intake: property-based (hypothesis) and mutation fuzzing.

A real nats-server and a recorder process take well over 10,000 hostile inputs,
batched many to a request. For every input: the reply holds one result per event,
in order; an event the validator refuses carries that code; the good events of a
mixed batch are recorded; every refused event is kept in CASETRAIL_REJECTS with its
code and its original bytes; every accepted one is in the log, chained. The
recorder never crashes (its process lives on) and never stalls (every request is
answered within its timeout, and a plain event is accepted afterwards).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.dates import utc_today
from schemas.errors import Code, Rejected
from schemas.intake import split_submission
from schemas.record import decode_record, verify_chain
from schemas.validation import decode_event
from services import subjects
from services.log import read_log, stream_state
from services.natsserver import NatsServer
from services.settings import Settings
from services.streams import ensure_streams
from tests.helpers import SOURCE, ServiceProcess, encode, event, opened, wait_for_recorder

pytestmark = pytest.mark.slow

CODES = {c.value for c in Code}
CASE_STAGE = {
    "event_id_conflict",
    "unknown_case",
    "case_exists",
    "unknown_target",
    "version_conflict",
}
BASE_CASE = "fuzz-base"


class Intake:
    """A server, a recorder process and a client, driven from synchronous (hypothesis) tests."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = NatsServer(tmp / "nats").start()
        self.recorder: ServiceProcess | None = None
        self.nc: nats.NATS | None = None
        self.run(self.server.wait_ready())
        self.nc = self.run(nats.connect(self.server.url, pending_size=256 * 1024 * 1024))
        self.run(ensure_streams(self.nc.jetstream(), Settings(nats_url=self.server.url)))
        self.recorder = ServiceProcess(
            "recorder", ["--nats", self.server.url], tmp / "recorder.log"
        )
        self.recorder.start()
        self.run(wait_for_recorder(self.nc))
        self.ids = itertools.count()
        # What each publisher was told: the refusals to find in the rejects stream, the acceptances.
        self.rejected: dict[str, list[tuple[str, bytes]]] = {}
        self.accepted: dict[str, dict[str, int]] = {}
        self.inputs = Counter()
        (result,) = self.submit("fuzz-setup", encode(opened(BASE_CASE)))
        assert result["status"] == "accepted"

    def run(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _request(self, publisher: str, body: bytes) -> list[dict]:
        assert self.nc is not None
        # A stall shows as a timeout here; an error reply as a KeyError.
        reply = await self.nc.request(subjects.intake(publisher), body, timeout=30)
        return json.loads(reply.data)["results"]

    def submit(self, publisher: str, body: bytes) -> list[dict]:
        return self.submit_all(publisher, [body])[0]

    def submit_all(self, publisher: str, bodies: list[bytes]) -> list[list[dict]]:
        """Requests in flight together; each reply checked against what was sent."""

        async def go() -> list[list[dict]]:
            return list(await asyncio.gather(*(self._request(publisher, b) for b in bodies)))

        replies = self.run(go())
        for body, results in zip(bodies, replies):
            self._check(publisher, body, results)
        return replies

    def _check(self, publisher: str, body: bytes, results: list[dict]) -> None:
        """One reply against the validator's verdict on each event of the body."""
        submission = split_submission(body)
        assert len(results) == len(submission.events), body[:200]
        today = utc_today()
        for raw, result in zip(submission.events, results):
            raw = bytes(raw)
            self.inputs[publisher] += 1
            expected: Rejected | None = submission.refused
            if expected is None:
                try:
                    decode_event(raw, today)
                except Rejected as exc:
                    expected = exc
            if expected is not None:
                assert (result["status"], result["code"]) == ("rejected", expected.code.value), raw[
                    :300
                ]
            else:  # valid on its own: only the case rules may refuse it
                assert result["status"] in ("accepted", "duplicate") or result["code"] in CASE_STAGE
            if result["status"] == "rejected":
                assert result["code"] in CODES and result["message"]
                self.rejected.setdefault(publisher, []).append((result["code"], raw))
            elif result["status"] == "accepted":
                self.accepted.setdefault(publisher, {})[result["event_id"]] = result["seq"]

    def new_id(self) -> int:
        return next(self.ids)

    def assert_alive_and_consistent(self, publisher: str, minimum_inputs: int) -> None:
        """The recorder lives and answers; the streams hold exactly what the replies said."""
        assert self.recorder is not None and self.recorder.process is not None
        assert self.recorder.process.poll() is None, "the recorder process died"
        n = self.new_id()
        (result,) = self.submit(publisher, encode(opened(f"alive-{n}", f"alive.{n}")))
        assert result["status"] == "accepted"
        assert self.inputs[publisher] >= minimum_inputs
        self.run(self._assert_streams(publisher))

    async def _assert_streams(self, publisher: str) -> None:
        assert self.nc is not None
        expected = self.rejected.get(publisher, [])
        state = await stream_state(
            self.nc, subjects.REJECTS_STREAM, f"{subjects.REJECTS_PREFIX}.*.{publisher}"
        )
        assert sum((state.subjects or {}).values()) == len(expected)
        stored: list[tuple[str, bytes]] = []
        if expected:
            done = asyncio.Event()

            async def keep(msg: Any) -> None:
                stored.append((msg.headers["Casetrail-Code"], msg.data))
                assert subjects.last_token(msg.subject) == publisher
                if len(stored) == len(expected):
                    done.set()

            sub = await self.nc.jetstream().subscribe(
                f"{subjects.REJECTS_PREFIX}.*.{publisher}", cb=keep, ordered_consumer=True
            )
            try:
                await asyncio.wait_for(done.wait(), 60)
            finally:
                await sub.unsubscribe()
        assert Counter(stored) == Counter(expected)

        records = []
        async for chunk in read_log(self.nc.jetstream()):
            records += [decode_record(data, seq) for seq, data in chunk]
        assert list(verify_chain(records)) == []
        mine = {r.event.event_id: r.seq for r in records if r.recorded_by == publisher}
        accepted = self.accepted.get(publisher, {})
        assert mine == accepted

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()
        if self.nc is not None:
            self.run(self.nc.close())
        self.server.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intake]:
    harness = Intake(tmp_path_factory.mktemp("fuzz"))
    try:
        yield harness
    finally:
        harness.close()


def batch(parts: list[bytes]) -> bytes:
    return b'{"events":[' + b",".join(parts) + b"]}"


# --- property-based: batches of generated inputs, good and bad mixed ------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
OPENED_FIELDS = {
    "type", "event_id", "case_id", "occurred_on", "circa", "sources", "note", "expected_version",
    "person", "jurisdiction", "region", "occupation", "case_name", "tags",
}  # fmt: skip
# A field and a predicate its value must fail for the event to be of the wrong type.
WRONG_TYPES = {
    "person": lambda v: not isinstance(v, dict),
    "jurisdiction": lambda v: not isinstance(v, str),
    "sources": lambda v: not isinstance(v, list),
    "circa": lambda v: not isinstance(v, bool),
    "occurred_on": lambda v: not isinstance(v, str),
    "note": lambda v: not isinstance(v, str) and v is not None,
    "tags": lambda v: not isinstance(v, list),
    "expected_version": lambda v: not isinstance(v, int) and v is not None,
}


_CASE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")


def deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, Any, str | None]:
    """(kind, the input as a JSON value or JSON text, the code it must get or None)."""
    kind = draw(
        st.sampled_from(
            ["good", "good", "good", "extra", "wrong_type", "missing", "any", "huge_number",
             "huge_string", "deep", "bad_id", "bad_date", "unknown_case", "future"]
        )
    )  # fmt: skip
    if kind == "good":
        return kind, None, None
    if kind == "extra":
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in OPENED_FIELDS))
        return kind, {"__extra__": (key, draw(json_values))}, "schema"
    if kind == "wrong_type":
        name = draw(st.sampled_from(sorted(WRONG_TYPES)))
        return kind, {"__set__": (name, draw(json_values.filter(WRONG_TYPES[name])))}, "schema"
    if kind == "missing":
        return (
            kind,
            {
                "__drop__": draw(
                    st.sampled_from(["type", "sources", "person", "jurisdiction", "occurred_on"])
                )
            },
            None,
        )
    if kind == "any":
        value = draw(json_values)
        return kind, value, None if isinstance(value, dict) else "malformed"
    if kind == "huge_number":
        digits = draw(st.integers(20, 3000))
        text = draw(
            st.sampled_from(
                [f"1{'0' * digits}", f"-{'9' * digits}", f"1e{digits}", f"0.{'1' * digits}"]
            )
        )
        return kind, ("expected_version", text), None
    if kind == "huge_string":
        return kind, {"__set__": ("note", "ж" * draw(st.integers(4_001, 20_000)))}, "schema"
    if kind == "deep":
        return kind, ("note", deep(draw(st.integers(10, 5_000)))), None
    if kind == "bad_id":
        bad = draw(st.text(max_size=90).filter(lambda s: not _CASE_ID.fullmatch(s.strip())))
        return kind, {"__set__": ("case_id", bad)}, "bad_id"
    if kind == "bad_date":
        text = draw(
            st.sampled_from(
                [
                    "2022-02-30",
                    "2022-13-01",
                    "22-03-16",
                    "2022/03/16",
                    "yesterday",
                    "2022-3-16",
                    "1899",
                ]
            )
        )
        return kind, {"__set__": ("occurred_on", text)}, "bad_date"
    if kind == "future":
        return kind, {"__set__": ("occurred_on", "2099-01-01")}, "bad_date"
    return kind, None, "unknown_case"


def render(intake: Intake, kind: str, spec: Any) -> bytes:
    """The JSON text of one generated input (on a case of its own where that matters)."""
    n = intake.new_id()
    base = opened(f"prop-{n}", f"prop.{n}")
    if kind == "good":
        return encode(base)
    if kind == "unknown_case":
        return encode(event("detained", f"nobody-{n}", f"prop.{n}"))
    if kind == "any":
        return encode(spec)
    if isinstance(spec, tuple):  # (field, JSON text) spliced in verbatim
        name, text = spec
        return encode(base)[:-1] + f',"{name}":{text}}}'.encode()
    if "__extra__" in spec:
        key, value = spec["__extra__"]
        return encode({**base, key: value})
    if "__set__" in spec:
        key, value = spec["__set__"]
        return encode({**base, key: value})
    base.pop(spec["__drop__"])
    return encode(base)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(st.lists(hostile(), min_size=20, max_size=60))
def _property_batches(intake: Intake, inputs: list[tuple[str, Any, str | None]]) -> None:
    parts = [render(intake, kind, spec) for kind, spec, _ in inputs]
    body = batch(parts)
    if len(body) > 900_000:  # one NATS message; the client would split it
        return
    (results,) = intake.submit_all("prop", [body])
    for (kind, _, code), result in zip(inputs, results):
        if kind == "good":
            assert result["status"] == "accepted", result
        elif code is not None:
            assert (result["status"], result["code"]) == ("rejected", code), (kind, result)
        else:
            assert result["status"] == "rejected", (kind, result)


def test_generated_batches_mixing_good_and_bad_events(intake: Intake) -> None:
    _property_batches(intake)
    intake.assert_alive_and_consistent("prop", minimum_inputs=3_000)


# --- mutation fuzzing: valid events and batches, damaged byte by byte -----------------


def templates(intake: Intake, rng: random.Random) -> bytes:
    """A valid event to damage: a new case, or a fact on the base case."""
    n = intake.new_id()
    choice = rng.randrange(4)
    if choice == 0:
        return encode(opened(f"mut-{n}", f"mut.{n}", tags=["anti-war"], region="Moscow"))
    if choice == 1:
        return encode(event("detained", BASE_CASE, f"mut.{n}", place="Moscow", authority="FSB"))
    if choice == 2:
        charge = {"code": "RU-CC", "article": "207.3", "part": "2", "points": ["а", "б", "д"]}
        return encode(event("charged", BASE_CASE, f"mut.{n}", charges=[charge]))
    return encode(
        event("sentenced", BASE_CASE, f"mut.{n}", "2023-04-01", court="Meshchansky District Court",
              punishment="imprisonment", term_months=84, regime="general", sources=SOURCE)
    )  # fmt: skip


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        if not b:
            break
        i = rng.randrange(len(b))
        op = rng.randrange(10)
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)  # a bit flip
        elif op == 1:
            b[i] = rng.randrange(256)  # any byte, invalid UTF-8 included
        elif op == 2:
            del b[i : i + rng.randint(1, 16)]
        elif op == 3:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 4:
            b = b[: rng.randrange(len(b))]  # truncated
        elif op == 5:
            b[i:i] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00"])
        elif op == 6:
            b[i:i] = deep(rng.choice([100, 1_000, 20_000])).encode()
        elif op == 7:
            b[i:i] = rng.choice(
                [b"1" * 400, b"1e999", b"-0", b"NaN", b"Infinity", b'"\\ud800"', b"null"]
            )
        elif op == 8:
            j = rng.randrange(len(b))
            b[i:i] = b[min(i, j) : max(i, j)][:2000]  # a repeated slice
        else:
            b[i:i] = rng.choice([b",", b":", b"{", b"}", b"[", b"]", b'"', b"\\", b" "])
    return bytes(b)


def test_mutated_events_and_batches(intake: Intake) -> None:
    rng = random.Random(20261201)
    publisher = "mutant"
    # Single damaged events, 250 requests in flight at a time.
    singles = [mutate(templates(intake, rng), rng) for _ in range(6_000)]
    for i in range(0, len(singles), 250):
        intake.submit_all(publisher, singles[i : i + 250])
    # Damaged envelopes of batches, and good events beside damaged ones.
    bodies = []
    for _ in range(300):
        parts = [templates(intake, rng) for _ in range(rng.randint(2, 12))]
        bodies.append(mutate(batch(parts), rng))
    for i in range(0, len(bodies), 50):
        intake.submit_all(publisher, bodies[i : i + 50])
    mixed = []
    for _ in range(100):
        n = intake.new_id()
        good = encode(opened(f"mixed-{n}", f"mixed.{n}"))
        bad = [mutate(templates(intake, rng), rng) for _ in range(10)]
        bad = [b for b in bad if _is_json(b)]  # inside an array, each part must be JSON text
        mixed.append((batch([*bad[:5], good, *bad[5:]]), min(5, len(bad))))
    replies = intake.submit_all(publisher, [body for body, _ in mixed])
    for (_, at), results in zip(mixed, replies):
        assert results[at]["status"] == "accepted", results[at]
    # Whole requests that are hostile: too many events, huge, deeply nested, not JSON.
    hostile_bodies = [
        batch([encode(opened(f"many-{i}", f"many.{i}")) for i in range(1_001)]),
        b"[" * 200_000,
        b'{"events":' + deep(50_000).encode() + b"}",
        b'{"events":[' + b"[" * 60_000 + b"]}",
        b'{"events":[], "extra": 1}',
        b'{"events": "all of them"}',
        b"\xff\xfe" + b"\x00" * 1000,
        b"",
        b"null",
        b'{"type": "case_opened", "note": "' + b"x" * 900_000 + b'"}',
    ]
    replies = intake.submit_all(publisher, hostile_bodies)
    assert all(r["status"] == "rejected" for r in replies[0]) and len(replies[0]) == 1_001
    assert {r["code"] for r in replies[0]} == {"too_large"}
    intake.assert_alive_and_consistent(publisher, minimum_inputs=7_500)


def _is_json(data: bytes) -> bool:
    try:
        msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True
