"""Hypothesis strategies: valid histories of one case, and the orders they may arrive in.

A history is a `case_opened`, then fact events of every type, then corrections and
retractions of earlier facts. Every fact and every replacement has its own lower
bound date, so the walk's order never falls back on `seq`: the status must then
be the same whatever order the recorder saw the non-opening events in, as long as
each amendment comes after its target and amendments of one event keep their order.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from hypothesis import strategies as st

from schemas.record import GENESIS, Record, encode_record
from schemas.validation import decode_event

TODAY = dt.date(2026, 12, 1)
FIRST = dt.date(2019, 1, 1)
SOURCE = [{"publisher": "OVD-Info"}]
COURTS = ["Presnensky District Court", "Moscow City Court"]
ORGS = ["Memorial", "OVD-Info", "Viasna"]
CHARGES = [
    {"code": "RU-CC", "article": "207.3", "part": "2", "points": ["a", "b", "e"]},
    {"code": "RU-CC", "article": "280.3", "part": "1"},
    {"code": "RU-CC", "article": "275"},
    {"code": "BY-CC", "article": "342", "part": "1"},
]
FACT_TYPES = [
    "detained", "charged", "charges_amended", "remanded", "remand_extended", "trial_started",
    "sentenced", "appeal_decided", "transferred", "released", "wanted", "recognized",
    "recognition_withdrawn", "ill_treatment_reported", "died", "case_closed",
]

maybe = st.one_of
months = st.one_of(st.none(), st.integers(1, 240))


def _fields(kind: str) -> st.SearchStrategy[dict]:
    court = st.sampled_from(COURTS)
    until = st.dates(dt.date(2019, 1, 1), dt.date(2028, 12, 31)).map(dt.date.isoformat)
    charges = st.lists(st.sampled_from(CHARGES), min_size=1, max_size=3)
    punishment = st.sampled_from(
        ["imprisonment", "suspended_sentence", "restriction_of_freedom", "compulsory_labour", "fine"]
    )
    regime = st.one_of(st.none(), st.sampled_from(["general", "strict", "settlement"]))
    options: dict[str, Any] = {
        "case_opened": st.fixed_dictionaries(
            {"person": st.fixed_dictionaries({"name": st.sampled_from(["Sergei Klokov", "Maria Ponomarenko"])}),
             "jurisdiction": st.sampled_from(["RU", "BY"])},
            optional={"region": st.sampled_from(["Moscow", "Minsk"])},
        ),
        "detained": st.fixed_dictionaries({}, optional={"authority": st.sampled_from(["FSB", "police"])}),
        "charged": st.fixed_dictionaries({"charges": charges}),
        "charges_amended": st.fixed_dictionaries({"charges": charges}),
        "remanded": st.fixed_dictionaries(
            {"measure": st.sampled_from(["custody", "house_arrest", "restrictions", "bail", "none"])},
            optional={"court": court, "until": until},
        ),
        "remand_extended": st.fixed_dictionaries({"until": until}, optional={"court": court}),
        "trial_started": st.fixed_dictionaries({"court": court}),
        "sentenced": st.fixed_dictionaries(
            {"court": court, "punishment": punishment, "term_months": months, "regime": regime,
             "in_absentia": st.booleans()}
        ),
        "appeal_decided": st.fixed_dictionaries(
            {"court": court,
             "outcome": st.sampled_from(["upheld", "reduced", "increased", "overturned", "sent_back"]),
             "punishment": st.one_of(st.none(), punishment), "term_months": months, "regime": regime}
        ),
        "transferred": st.fixed_dictionaries({"facility": st.sampled_from(["SIZO-1", "IK-6"])}),
        "released": st.fixed_dictionaries(
            {"reason": st.sampled_from(["sentence_served", "acquitted", "parole", "exchange"])}
        ),
        "wanted": st.just({}),
        "recognized": st.fixed_dictionaries(
            {"organization": st.sampled_from(ORGS)},
            optional={"designation": st.sampled_from(["political_prisoner", "prisoner_of_conscience"])},
        ),
        "recognition_withdrawn": st.fixed_dictionaries({"organization": st.sampled_from(ORGS)}),
        "ill_treatment_reported": st.fixed_dictionaries({"kind": st.sampled_from(["beating", "threats"])}),
        "died": st.fixed_dictionaries({"in_custody": st.booleans()}),
        "case_closed": st.fixed_dictionaries({"reason": st.sampled_from(["charges_dropped", "death"])}),
    }
    return options[kind]


def _written(day: dt.date, coarse: bool) -> str:
    """A date as a publisher may write it: month or year only when that loses nothing."""
    if coarse and day.month == 1 and day.day == 1:
        return day.strftime("%Y")
    if coarse and day.day == 1:
        return day.strftime("%Y-%m")
    return day.isoformat()


@st.composite
def fact(draw: st.DrawFn, kind: str, day: dt.date) -> dict:
    body = {k: v for k, v in draw(_fields(kind)).items() if v is not None}
    return {"type": kind, "occurred_on": _written(day, draw(st.booleans())), "circa": draw(st.booleans()),
            "sources": SOURCE, **body}


@st.composite
def history(draw: st.DrawFn, case_id: str = "ru-2022-test", max_facts: int = 12) -> list[dict]:
    """The events of one case in a valid log order (opening first, amendments after targets)."""
    facts = draw(st.integers(0, max_facts))
    amendments = draw(st.integers(0, 4)) if facts else 0
    # One distinct lower bound per version, with 1st-of-month days so coarse dates occur.
    offsets = draw(st.lists(st.integers(0, (TODAY - FIRST).days), min_size=1 + facts + amendments,
                            max_size=1 + facts + amendments, unique=True))
    days = [FIRST + dt.timedelta(days=o) for o in offsets]
    opened = draw(fact("case_opened", days[0]))
    events = [{**opened, "event_id": f"{case_id}-0", "case_id": case_id}]
    for n in range(1, facts + 1):
        kind = draw(st.sampled_from(FACT_TYPES))
        events.append({**draw(fact(kind, days[n])), "event_id": f"{case_id}-{n}", "case_id": case_id})
    for n in range(amendments):
        target = draw(st.sampled_from(events[: facts + 1]))["event_id"]
        amend_id = f"{case_id}-a{n}"
        if draw(st.booleans()):
            kind = draw(st.sampled_from(["case_opened", *FACT_TYPES]))
            replacement = {**draw(fact(kind, days[facts + 1 + n])), "case_id": case_id}
            events.append({"type": "event_corrected", "event_id": amend_id, "case_id": case_id,
                           "occurred_on": TODAY.isoformat(), "sources": SOURCE,
                           "target_event_id": target, "replacement": replacement})
        else:
            events.append({"type": "event_retracted", "event_id": amend_id, "case_id": case_id,
                           "occurred_on": TODAY.isoformat(), "sources": SOURCE,
                           "target_event_id": target, "reason": "the source withdrew it"})
    return events


@st.composite
def arrival(draw: st.DrawFn, events: list[dict]) -> list[dict]:
    """Another valid arrival order: opening first, each amendment after its target,
    amendments of one target in their original order."""
    rest = draw(st.permutations(events[1:]))
    placed: list[dict] = [events[0]]
    pending = list(rest)
    while pending:
        for i, event in enumerate(pending):
            target = event.get("target_event_id")
            earlier_amendments = [
                e for e in events
                if e.get("target_event_id") == target and target is not None
                and events.index(e) < events.index(event)
            ]
            ready = target is None or (
                any(p["event_id"] == target for p in placed)
                and all(any(p["event_id"] == e["event_id"] for p in placed) for e in earlier_amendments)
            )
            if ready:
                placed.append(pending.pop(i))
                break
    return placed


def recorded_at(n: int) -> str:
    base = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=n)
    return base.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def records(events: list[dict], first_seq: int = 1, recorded_by: str = "test") -> list[Record]:
    """Records as the recorder would write them (validated, normalised), seq set.

    `case_version` counts each case's own records, as the recorder numbers them.
    """
    out = []
    versions: dict[str, int] = {}
    for n, raw in enumerate(events):
        event = decode_event(msgspec.json.encode(raw), TODAY)
        versions[event.case_id] = versions.get(event.case_id, 0) + 1
        record = Record(
            seq=first_seq + n,
            recorded_at=recorded_at(first_seq + n),
            recorded_by=recorded_by,
            case_version=versions[event.case_id],
            prev_hash=GENESIS,
            hash="0" * 64,
            event=event,  # type: ignore[arg-type]
        )
        out.append(record)
    return out


def as_dicts(recs: list[Record]) -> list[dict]:
    """What the reference implementation reads: plain values, as submitted (normalised)."""
    return [
        {"seq": r.seq, "recorded_at": r.recorded_at, "event": msgspec.to_builtins(r.event)} for r in recs
    ]


def delivered(recs: list[Record]) -> list[tuple[int, bytes]]:
    """`(seq, bytes)` as the log delivers them (the body has no seq)."""
    out = []
    for r in recs:
        body = msgspec.structs.replace(r, seq=msgspec.UNSET)
        out.append((r.seq, encode_record(body)))  # type: ignore[arg-type]
    return out
