"""Inputs that once reached past the validator: each is refused with a code and kept."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from schemas.errors import Rejected
from schemas.intake import peek_event_id, split_submission
from schemas.validation import decode_event
from services import subjects

DEEP = b"[" * 20_000 + b"]" * 20_000
NESTED_INPUTS = [
    b'{"note": ' + DEEP + b', "type": "detained"}',  # the tag after a deep value
    b'{"x": ' + DEEP + b', "type": "detained", "event_id": "e1"}',
    b'{"events": [{"note": ' + DEEP + b', "type": "detained"}]}',
]


@pytest.mark.parametrize("raw", NESTED_INPUTS)
def test_deep_nesting_is_malformed_not_a_crash(raw: bytes) -> None:
    submission = split_submission(raw)
    assert len(submission.events) == 1 and peek_event_id(raw) is None
    with pytest.raises(Rejected) as caught:
        decode_event(bytes(submission.events[0]), dt.date(2026, 12, 1))
    assert caught.value.code.value == "malformed" and "nested too deeply" in caught.value.message


def test_a_batch_too_deep_for_the_decoder_is_still_split_into_its_events() -> None:
    good = b'{"type": "detained", "event_id": "a,]}", "case_id": "c"}'
    deep = b'{"note": ' + DEEP + b', "type": "detained"}'
    submission = split_submission(
        b' {"events" : [ ' + good + b", " + deep + b",\n" + good + b" ] } "
    )
    assert submission.batch and submission.refused is None
    assert [bytes(e) for e in submission.events] == [good, deep, good]
    for broken in (
        b'{"events": [' + deep + b",]}",  # a trailing comma
        b'{"events": [' + deep + b"]} trailing",
        b'{"events": [' + deep + b"]",  # not closed
        b'{"events": [' + deep + b'], "more": 1}',
        b"[" + deep + b"]",
    ):
        assert len(split_submission(broken).events) == 1 and not split_submission(broken).batch


async def test_recorder_refuses_deep_nesting_and_records_the_good_events_beside_it(
    nc, recorder
) -> None:
    good = (
        b'{"type":"case_opened","event_id":"deep-ok","case_id":"ru-2022-deep","occurred_on":"2022",'
        b'"sources":[{"publisher":"OVD-Info"}],"person":{"name":"A"},"jurisdiction":"RU"}'
    )
    deep_event = b'{"note": ' + DEEP + b', "type": "detained"}'
    for body, statuses in (
        (deep_event, ["rejected"]),
        (b'{"events": [' + deep_event + b"," + good + b"]}", ["rejected", "accepted"]),
    ):
        reply = await nc.request(subjects.intake("ovd"), body, timeout=10)
        results = msgspec.json.decode(reply.data)["results"]
        assert [r["status"] for r in results] == statuses
        assert results[0]["code"] == "malformed"
    kept = await nc.jetstream().get_last_msg(
        subjects.REJECTS_STREAM, subjects.rejects("malformed", "ovd")
    )
    assert kept.data == deep_event and kept.headers["Casetrail-Code"] == "malformed"
