"""The vocabulary: every event type round-trips; validation gives EVENTS.md's codes."""

from __future__ import annotations

import datetime as dt
import json

import msgspec
import pytest

from schemas import (
    EVENT_TYPES,
    TYPE_NAMES,
    Code,
    Rejected,
    canonical_bytes,
    decode_event,
    example_path,
)
from schemas.events import Charge
from schemas.jsonschema import vocabulary_schema
from schemas.record import GENESIS, Record, chain_hash, decode_record, encode_record, verify_chain
from tests.helpers import encode, event

TODAY = dt.date(2026, 12, 1)
CHARGE = {"code": "RU-CC", "article": "207.3", "part": "2", "points": ["a", "b", "e"]}
FINE = {"amount": 30000, "currency": "RUB"}

# One complete example of every type, with every optional field set.
EXAMPLES: dict[str, dict] = {
    "case_opened": dict(
        person={
            "name": "Sergei Klokov",
            "name_original": "Сергей Клоков",
            "aliases": ["S. Klokov"],
            "birth_year": 1984,
            "birthplace": "Ukraine",
        },
        jurisdiction="RU",
        region="Moscow",
        occupation="police officer",
        case_name="Klokov case",
        tags=["anti-war"],
    ),
    "detained": dict(place="Moscow", authority="FSB", circumstances="at his home"),
    "charged": dict(charges=[CHARGE]),
    "charges_amended": dict(charges=[{**CHARGE, "title": "fakes", "max_years": 10}]),
    "remanded": dict(measure="custody", court="Presnensky District Court", until="2027-05-16"),
    "remand_extended": dict(until="2027-08-16", court="Presnensky District Court"),
    "trial_started": dict(court="Meshchansky District Court"),
    "sentenced": dict(
        court="Meshchansky District Court",
        punishment="imprisonment",
        term_months=72,
        regime="general",
        fine=FINE,
        in_absentia=False,
        charges=[CHARGE],
    ),
    "appeal_decided": dict(
        court="Moscow City Court",
        instance="appeal",
        outcome="reduced",
        punishment="imprisonment",
        term_months=60,
        regime="general",
        fine=None,
    ),
    "transferred": dict(facility="IK-2 Pokrov", region="Vladimir"),
    "released": dict(reason="sentence_served"),
    "wanted": dict(authority="Investigative Committee"),
    "recognized": dict(
        organization="Memorial",
        designation="political_prisoner",
        statement_url="https://memopzk.org/",
    ),
    "recognition_withdrawn": dict(organization="Memorial", reason="new facts"),
    "ill_treatment_reported": dict(kind="beating", description="beaten at the police station"),
    "died": dict(in_custody=True, cause="denial of medical care"),
    "case_closed": dict(reason="death"),
    "event_corrected": dict(
        target_event_id="e-remanded",
        replacement={
            "type": "remanded",
            "case_id": "ru-2022-x",
            "occurred_on": "2022-03-19",
            "sources": [{"publisher": "Memorial"}],
            "measure": "house_arrest",
        },
    ),
    "event_retracted": dict(target_event_id="e-wanted", reason="confused with another person"),
}


def full(type_: str) -> dict:
    return event(type_, "ru-2022-x", f"e-{type_}", note="a note", circa=True, **EXAMPLES[type_])


def rejected(data: dict | bytes) -> Rejected:
    raw = data if isinstance(data, bytes) else encode(data)
    with pytest.raises(Rejected) as info:
        decode_event(raw, TODAY)
    return info.value


def test_every_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(TYPE_NAMES)
    assert len(EVENT_TYPES) == 19


@pytest.mark.parametrize("type_", TYPE_NAMES)
def test_round_trip_keeps_every_field(type_: str) -> None:
    submitted = full(type_)
    decoded = decode_event(encode(submitted), TODAY)
    assert decoded.type == type_
    again = json.loads(canonical_bytes(decoded))
    for key, value in submitted.items():
        if key == "sources":
            assert again["sources"][0]["publisher"] == "OVD-Info"
        elif key == "replacement":
            assert again[key]["measure"] == "house_arrest"
            assert "event_id" not in again[key]
        elif key == "charges":
            assert again[key][0]["points"] == ["a", "b", "e"]
        elif key == "fine" and value:
            assert again[key] == {"amount": 30000.0, "currency": "RUB"}
        else:
            assert again[key] == value, key
    # Decoding the canonical form gives the same canonical form.
    assert canonical_bytes(decode_event(canonical_bytes(decoded), TODAY)) == canonical_bytes(decoded)


def test_same_content_in_other_key_order_or_with_defaults_omitted_is_equal() -> None:
    a = event("released", "ru-2022-x", "e1", reason="parole")
    b = dict(reversed(list({**a, "circa": False, "note": None}.items())))
    assert canonical_bytes(decode_event(encode(a), TODAY)) == canonical_bytes(
        decode_event(encode(b), TODAY)
    )


def test_strings_are_trimmed_and_empty_optional_ones_become_null() -> None:
    decoded = decode_event(
        encode(event("detained", " ru-2022-x ", " e1 ", place="  Moscow ", authority="   ")), TODAY
    )
    assert (decoded.case_id, decoded.event_id, decoded.place, decoded.authority) == (
        "ru-2022-x",
        "e1",
        "Moscow",
        None,
    )


def test_charge_display_form() -> None:
    assert Charge(code="RU-CC", article="207.3", part="2", points=["a", "b", "e"]).display == (
        "RU-CC 207.3(2)(a,b,e)"
    )
    assert Charge(code="RU-CC", article="280.3").display == "RU-CC 280.3"
    assert Charge(code="BY-CC", article="342", part="1").display == "BY-CC 342(1)"


def test_cyrillic_points_are_written_in_latin_by_their_place() -> None:
    charge = {"code": "RU-CC", "article": "207.3", "part": "2", "points": ["а", "б", "Д", "е"]}
    decoded = decode_event(encode(event("charged", "ru-2022-x", "e1", charges=[charge])), TODAY)
    assert decoded.charges[0].display == "RU-CC 207.3(2)(a,b,e,f)"


def test_sample_case_decodes_and_matches_the_statement() -> None:
    events = [decode_event(line, TODAY) for line in example_path().read_bytes().splitlines()]
    assert [e.type for e in events] == ["case_opened", "detained", "charged", "remanded", "recognized"]
    opened, detained, charged, remanded, recognized = events
    assert opened.person.name == "Sergei Klokov" and opened.person.birth_year == 1984
    assert opened.jurisdiction == "RU"
    assert detained.occurred_on == "2022-03-16" and charged.occurred_on == "2022-03-16"
    assert [c.display for c in charged.charges] == ["RU-CC 207.3(2)(a,b,e)"]
    assert charged.charges[0].max_years == 10
    assert remanded.occurred_on == "2022-03-18" and remanded.measure == "custody"
    assert "Presnensky" in remanded.court
    assert (recognized.organization, recognized.occurred_on) == ("Memorial", "2022-05-17")
    assert {e.case_id for e in events} == {"ru-2022-klokov"}


# --- one realistic bad input per code, checking the code and the field path -----------


@pytest.mark.parametrize(
    "raw, code, path",
    [
        (b'{"type": "detained", "event_id": ', Code.MALFORMED, "$"),
        (b'["detained"]', Code.MALFORMED, "$"),
        (b"\xff\xfe{}", Code.MALFORMED, "$"),
        (encode(event("arrested", "ru-2022-x", "e1")), Code.SCHEMA, "$.type"),
        (encode(event("detained", "ru-2022-x", "e1", plaec="Moscow")), Code.SCHEMA, "plaec"),
        (encode({**event("detained", "ru-2022-x", "e1"), "sources": []}), Code.SCHEMA, "$.sources"),
        (
            encode(event("remanded", "ru-2022-x", "e1", measure="jail")),
            Code.SCHEMA,
            "$.measure",
        ),
        (
            encode(event("sentenced", "ru-2022-x", "e1", court="c", punishment="prison", term_months="6")),
            Code.SCHEMA,
            "$.punishment",
        ),
        (
            encode(event("sentenced", "ru-2022-x", "e1", court="c", punishment="fine", term_months="6")),
            Code.SCHEMA,
            "$.term_months",
        ),
        (
            encode({**event("released", "ru-2022-x", "e1", reason="parole"), "sources": [{"publisher": " "}]}),
            Code.SCHEMA,
            "$.sources[0].publisher",
        ),
        (encode(event("charged", "ru-2022-x", "e1", charges=[])), Code.SCHEMA, "$.charges"),
        (
            encode(event("case_opened", "ru-2022-x", "e1", person={"name": "A"}, jurisdiction="SU")),
            Code.SCHEMA,
            "$.jurisdiction",
        ),
        (encode(event("detained", "RU_2022", "e1")), Code.BAD_ID, "$.case_id"),
        (encode(event("detained", "ru-2022-x", "e 1")), Code.BAD_ID, "$.event_id"),
        (encode(event("detained", "ru-2022-x", "x" * 65)), Code.BAD_ID, "$.event_id"),
        (
            encode(event("event_retracted", "ru-2022-x", "e1", target_event_id="-bad", reason="r")),
            Code.BAD_ID,
            "$.target_event_id",
        ),
        (encode(event("detained", "ru-2022-x", "e1", "2022-02-30")), Code.BAD_DATE, "$.occurred_on"),
        (encode(event("detained", "ru-2022-x", "e1", "16.03.2022")), Code.BAD_DATE, "$.occurred_on"),
        (encode(event("detained", "ru-2022-x", "e1", "2027-01")), Code.BAD_DATE, "$.occurred_on"),
        (
            encode({**event("detained", "ru-2022-x", "e1"), "sources": [{"publisher": "p", "published_on": "2030"}]}),
            Code.BAD_DATE,
            "$.sources[0].published_on",
        ),
        (
            encode(event("remanded", "ru-2022-x", "e1", measure="custody", until="2022-05")),
            Code.BAD_DATE,
            "$.until",
        ),
        (encode(event("detained", "ru-2022-x", "e1", note="x" * 70_000)), Code.TOO_LARGE, "$"),
    ],
)
def test_rejection_code_and_field_path(raw: bytes, code: Code, path: str) -> None:
    found = rejected(raw)
    assert found.code is code, found
    assert path in found.message


def test_until_may_lie_ahead_but_occurred_on_may_not() -> None:
    ahead = (TODAY + dt.timedelta(days=60)).isoformat()
    decode_event(encode(event("remand_extended", "ru-2022-x", "e1", until=ahead)), TODAY)
    assert rejected(event("detained", "ru-2022-x", "e1", ahead)).code is Code.BAD_DATE


def test_precedence_schema_before_bad_id_before_bad_date() -> None:
    bad_everything = event("detained", "BAD ID", "e1", "2022-13-01", plaec="x")
    assert rejected(bad_everything).code is Code.SCHEMA
    assert rejected(event("detained", "BAD ID", "e1", "2022-13-01")).code is Code.BAD_ID
    # An empty required string (schema) outranks a bad date found earlier in the walk.
    late = {**event("detained", "ru-2022-x", "e1", "2022-13-01"), "sources": [{"publisher": ""}]}
    assert rejected(late).code is Code.SCHEMA


def test_replacement_rules() -> None:
    base = full("event_corrected")
    with_id = {**base, "replacement": {**base["replacement"], "event_id": "x"}}
    assert rejected(with_id).code is Code.SCHEMA and "$.replacement.event_id" in rejected(with_id).message
    other_case = {**base, "replacement": {**base["replacement"], "case_id": "ru-2022-y"}}
    assert "$.replacement.case_id" in rejected(other_case).message
    bad_date = {**base, "replacement": {**base["replacement"], "occurred_on": "2022-02-31"}}
    found = rejected(bad_date)
    assert found.code is Code.BAD_DATE and "$.replacement.occurred_on" in found.message
    nested_correction = {**base, "replacement": {**base["replacement"], "type": "event_retracted"}}
    assert rejected(nested_correction).code is Code.SCHEMA


# --- records and the chain --------------------------------------------------------------


def _chain(n: int) -> list[Record]:
    records, prev = [], GENESIS
    for i in range(1, n + 1):
        ev = decode_event(encode(event("detained", "ru-2022-x", f"e{i}")), TODAY)
        at = f"2026-12-01T00:00:0{i}.000000Z"
        digest = chain_hash(prev, i, at, "ovd", canonical_bytes(ev))
        records.append(Record(seq=i, recorded_at=at, recorded_by="ovd", case_version=i, prev_hash=prev, hash=digest, event=ev))
        prev = digest
    return records


def test_record_round_trip_and_seq_is_not_stored_in_the_body() -> None:
    record = _chain(1)[0]
    body = encode_record(msgspec.structs.replace(record, seq=msgspec.UNSET))
    assert b'"seq"' not in body
    assert decode_record(body, seq=7).seq == 7
    assert list(verify_chain(_chain(5))) == []


def test_chain_names_an_edited_and_a_missing_record() -> None:
    records = _chain(5)
    records[1].recorded_by = "someone-else"
    del records[3]
    breaks = list(verify_chain(records))
    assert [(b.seq, b.case_version) for b in breaks] == [(2, 2), (5, 5)]
    assert "hash" in breaks[0].problem and "missing" in breaks[1].problem


def test_json_schema_is_generated_from_the_structs() -> None:
    schema = vocabulary_schema()
    tags = {ref["$ref"].rsplit("/", 1)[-1] for ref in schema["anyOf"]}
    assert len(tags) == 19 and "CaseOpened" in tags
    reliability = schema["$defs"]["Source"]["properties"]["reliability"]
    assert set(reliability["enum"]) == {"confirmed", "credible", "unverified"}
    assert schema["$defs"]["Detained"]["additionalProperties"] is False
