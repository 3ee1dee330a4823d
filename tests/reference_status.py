"""A plain reference implementation of EVENTS.md "Derived case status", for the tests.

Written apart from `projections/` and on purpose differently: plain dicts as the
events were submitted, one loop, custody spells kept as a list of (start, end).
It follows EVENTS.md and the decisions `projections.status` writes down where
EVENTS.md is silent (an appeal with a new punishment keeps the in-absentia of the
sentence it revises; an appeal merges only into a sentence in force; a charge is
listed once).
"""

from __future__ import annotations

import datetime as dt


def lower(value: str) -> dt.date:
    if len(value) == 4:
        return dt.date(int(value), 1, 1)
    if len(value) == 7:
        return dt.date(int(value[:4]), int(value[5:7]), 1)
    return dt.date.fromisoformat(value)


def display(charge: dict) -> str:
    text = charge["code"] + " " + charge["article"]
    if charge.get("part"):
        text += "(" + charge["part"] + ")"
    if charge.get("points"):
        text += "(" + ",".join(charge["points"]) + ")"
    return text


def effective_events(records: list[dict], known_at: str | None = None) -> list[tuple]:
    """[(lower bound, seq, event dict)] sorted; records are {"seq", "recorded_at", "event"}."""
    facts: dict[str, tuple[int, dict]] = {}
    replacement: dict[str, dict] = {}
    retracted: set[str] = set()
    for record in sorted(records, key=lambda r: r["seq"]):
        if known_at is not None and record["recorded_at"] > known_at:
            continue
        event = record["event"]
        if event["type"] == "event_corrected":
            replacement[event["target_event_id"]] = event["replacement"]
        elif event["type"] == "event_retracted":
            retracted.add(event["target_event_id"])
        else:
            facts[event["event_id"]] = (record["seq"], event)
    out = []
    for event_id, (seq, event) in facts.items():
        if event_id in retracted:
            continue
        shown = replacement.get(event_id, event)
        out.append((lower(shown["occurred_on"]), seq, shown))
    out.sort(key=lambda item: (item[0], item[1]))
    return out


def custody_after_sentence(punishment: str, in_absentia: bool) -> str:
    if punishment == "imprisonment":
        return "wanted" if in_absentia else "in_custody"
    if punishment == "restriction_of_freedom":
        return "restricted"
    return "at_liberty"


def reference_status(
    case_id: str, records: list[dict], on: dt.date, known_at: str | None = None
) -> dict | None:
    walked = [item for item in effective_events(records, known_at) if item[0] <= on]
    if not walked:
        return None
    name = None
    custody = None
    stage = None
    charges: list[str] = []
    stance: dict[str, bool] = {}
    spells: list[list] = []  # [start, end or None]
    sentence = None
    absentia = False
    measures = {"custody": "in_custody", "house_arrest": "house_arrest",
                "restrictions": "restricted", "bail": "restricted", "none": "at_liberty"}
    for day, _seq, e in walked:
        kind = e["type"]
        new_custody = custody
        if kind == "case_opened":
            name = e["person"]["name"]
            if custody is None:
                new_custody = "at_liberty"
            if stage is None:
                stage = "investigation"
        elif kind in ("detained", "transferred"):
            new_custody = "in_custody"
        elif kind == "remanded":
            new_custody = measures[e["measure"]]
        elif kind == "trial_started":
            stage = "trial"
        elif kind == "sentenced":
            new_custody = custody_after_sentence(e["punishment"], e.get("in_absentia", False))
            stage = "sentenced"
            sentence = {"punishment": e["punishment"], "term_months": e.get("term_months"),
                        "regime": e.get("regime")}
            absentia = e.get("in_absentia", False)
        elif kind == "appeal_decided":
            outcome = e["outcome"]
            if outcome == "overturned":
                new_custody = "at_liberty"
            elif e.get("punishment") is not None:
                new_custody = custody_after_sentence(e["punishment"], absentia)
            if outcome == "overturned":
                stage, sentence, absentia = "closed", None, False
            elif outcome == "sent_back":
                stage, sentence, absentia = "trial", None, False
            elif sentence is not None:
                for field in ("punishment", "term_months", "regime"):
                    if e.get(field) is not None:
                        sentence[field] = e[field]
        elif kind == "released":
            new_custody = "at_liberty"
            if e["reason"] in ("acquitted", "charges_dropped", "sentence_served"):
                stage = "closed"
        elif kind == "wanted":
            new_custody = "wanted"
        elif kind == "died":
            new_custody = "deceased"
        elif kind == "case_closed":
            new_custody = "at_liberty"
            stage = "closed"
        elif kind == "charged":
            for charge in e["charges"]:
                if display(charge) not in charges:
                    charges.append(display(charge))
        elif kind == "charges_amended":
            charges = []
            for charge in e["charges"]:
                if display(charge) not in charges:
                    charges.append(display(charge))
        elif kind == "recognized":
            stance[e["organization"]] = True
        elif kind == "recognition_withdrawn":
            stance[e["organization"]] = False
        if custody == "deceased":
            new_custody = "deceased"
        if new_custody != custody:
            if custody == "in_custody":
                spells[-1][1] = day
            if new_custody == "in_custody":
                spells.append([day, None])
            custody = new_custody
    days = sum(((end or on) - start).days for start, end in spells)
    open_spell = spells[-1][0] if spells and spells[-1][1] is None else None
    return {
        "case_id": case_id,
        "name": name,
        "custody": custody,
        "stage": stage,
        "charges": charges,
        "recognized_by": sorted(org for org, yes in stance.items() if yes),
        "custody_since": open_spell.isoformat() if custody == "in_custody" and open_spell else None,
        "days_in_custody": days,
        "sentence": sentence,
        "last_event_on": walked[-1][2]["occurred_on"],
        "events": len(walked),
    }
