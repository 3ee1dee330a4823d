"""One line of plain English per event, as a timeline reader wants to see it.

"Remanded in custody by Presnensky District Court until 2022-05-16".
"""

from __future__ import annotations

from schemas.events import (
    AppealDecided,
    CaseClosed,
    CaseOpened,
    Charged,
    ChargesAmended,
    Detained,
    Died,
    EventBase,
    EventRetracted,
    Fine,
    IllTreatmentReported,
    RecognitionWithdrawn,
    Recognized,
    Released,
    Remanded,
    RemandExtended,
    Sentenced,
    Transferred,
    TrialStarted,
    Wanted,
)

MEASURES = {
    "custody": "in custody",
    "house_arrest": "to house arrest",
    "restrictions": "with restrictions",
    "bail": "on bail",
    "none": "with no preventive measure",
}
DESIGNATIONS = {
    "political_prisoner": "a political prisoner",
    "politically_persecuted": "politically persecuted",
    "prisoner_of_conscience": "a prisoner of conscience",
}
OUTCOMES = {
    "upheld": "upheld the sentence",
    "reduced": "reduced the sentence",
    "increased": "increased the sentence",
    "overturned": "overturned the sentence",
    "sent_back": "sent the case back for a new trial",
}


def _words(value: str) -> str:
    return value.replace("_", " ")


def term(months: int) -> str:
    """`18` -> "1 year 6 months"."""
    years, rest = divmod(months, 12)
    parts = []
    if years:
        parts.append(f"{years} year{'s' if years != 1 else ''}")
    if rest or not years:
        parts.append(f"{rest} month{'s' if rest != 1 else ''}")
    return " ".join(parts)


def _possessive(words: str) -> str:
    """"7 years" -> "7 years'", "1 year" -> "1 year's"."""
    return words + ("'" if words.endswith("s") else "'s")


def _fine(fine: Fine) -> str:
    amount = int(fine.amount) if fine.amount == int(fine.amount) else fine.amount
    return f"a fine of {amount:,} {fine.currency}"


def punishment(
    kind: str | None, months: int | None = None, regime: str | None = None, fine: Fine | None = None
) -> str:
    """"7 years' imprisonment (strict regime)", "a suspended sentence of 2 years", ..."""
    if kind == "imprisonment":
        text = f"{_possessive(term(months))} imprisonment" if months else "imprisonment"
        if regime:
            text += f" ({_words(regime)} regime)"
        return text
    if kind == "suspended_sentence":
        return f"a suspended sentence of {term(months)}" if months else "a suspended sentence"
    if kind == "fine":
        return _fine(fine) if fine else "a fine"
    if kind is None:
        return _fine(fine) if fine else ""
    text = _words(kind)
    if months:
        text = f"{term(months)} of {text}"
    if fine:
        text += f" and {_fine(fine)}"
    return text


def _by(name: str | None) -> str:
    return f" by {name}" if name else ""


def _case_opened(event: CaseOpened) -> str:
    where = ", ".join(x for x in (event.region, event.jurisdiction) if x)
    text = f"Case opened: {event.person.name} ({where})"
    return text + (f", {event.case_name}" if event.case_name else "")


def _detained(event: Detained) -> str:
    return "Detained" + _by(event.authority) + (f" in {event.place}" if event.place else "")


def _remanded(event: Remanded) -> str:
    text = f"Remanded {MEASURES[event.measure]}" + _by(event.court)
    return text + (f" until {event.until}" if event.until else "")


def _sentenced(event: Sentenced) -> str:
    text = f"Sentenced by {event.court} to " + punishment(
        event.punishment, event.term_months, event.regime, event.fine
    )
    return text + (" in absentia" if event.in_absentia else "")


_INSTANCES = {"appeal": "Appeal", "cassation": "Cassation", "supervisory": "Supervisory review"}


def _appeal_decided(event: AppealDecided) -> str:
    text = f"{_INSTANCES[event.instance]}: {event.court} {OUTCOMES[event.outcome]}"
    changed = punishment(event.punishment, event.term_months, event.regime, event.fine)
    if changed and event.outcome not in ("overturned", "sent_back"):
        text += f" to {changed}"
    return text


def _with(text: str, detail: str | None) -> str:
    return text + (f": {_first_line(detail)}" if detail else "")


# One line per type; looked up by class (a `match` over 19 classes costs more per event).
_LINES = {
    CaseOpened: _case_opened,
    Detained: _detained,
    Charged: lambda e: "Charged under " + ", ".join(c.display for c in e.charges),
    ChargesAmended: lambda e: "Charges amended to " + ", ".join(c.display for c in e.charges),
    Remanded: _remanded,
    RemandExtended: lambda e: f"Remand extended until {e.until}" + _by(e.court),
    TrialStarted: lambda e: f"Trial started at {e.court}",
    Sentenced: _sentenced,
    AppealDecided: _appeal_decided,
    Transferred: lambda e: f"Transferred to {e.facility}" + (f" ({e.region})" if e.region else ""),
    Released: lambda e: f"Released: {_words(e.reason)}",
    Wanted: lambda e: "Put on the wanted list" + _by(e.authority),
    Recognized: lambda e: f"Recognised as {DESIGNATIONS[e.designation]} by {e.organization}",
    RecognitionWithdrawn: lambda e: _with(f"{e.organization} withdrew its recognition", e.reason),
    IllTreatmentReported: lambda e: _with(f"Ill-treatment reported: {_words(e.kind)}", e.description),
    Died: lambda e: _with("Died in custody" if e.in_custody else "Died", e.cause),
    CaseClosed: lambda e: f"Case closed: {_words(e.reason)}",
    EventRetracted: lambda e: _with(f"Retracted {e.target_event_id}", e.reason),
}


def summary(event: EventBase) -> str:
    """The timeline line of one event (a fact, a correction's replacement, a retraction)."""
    line = _LINES.get(type(event))
    return line(event) if line else _words(event.type).capitalize()


def _first_line(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
