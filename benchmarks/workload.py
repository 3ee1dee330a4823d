"""Seeded, deterministic synthetic workloads of realistic shape.

Cases follow the life of a prosecution (opening, detention or a wanted notice,
charges, remand and its extensions, trial, sentence, appeal, transfers, release,
recognitions, reports of ill-treatment, now and then a death or a closed case).
Case activity is skewed: most cases hold a handful of events, a few hold hundreds.
Events arrive in the order they were reported, interleaved across cases; about 5%
are reported late (after events that happened later), and about 2% are corrections
or retractions of an earlier event of the same case.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator

import msgspec

FIRST_DAY = dt.date(2014, 1, 1)
LAST_DAY = dt.date(2026, 10, 31)
PUBLISHERS = ["OVD-Info", "Memorial", "Mediazona", "Viasna", "Sota"]
ARTICLES = [
    ("RU-CC", "207.3", "2", ["a", "b", "e"]),
    ("RU-CC", "280.3", "1", []),
    ("RU-CC", "275", None, []),
    ("RU-CC", "205.2", "2", []),
    ("RU-CC", "212", "2", []),
    ("RU-CC", "282.2", "1", []),
    ("BY-CC", "342", "1", []),
    ("BY-CC", "361-1", "1", []),
]
REGIONS = ["Moscow", "St Petersburg", "Krasnodar", "Tatarstan", "Bashkortostan", "Crimea", "Minsk"]
COURTS = ["Presnensky District Court", "Meshchansky District Court", "Moscow City Court",
          "Second Western Military District Court", "Minsk City Court"]
ORGS = ["Memorial", "Viasna", "Amnesty International", "OVD-Info"]
FACILITIES = ["SIZO-1", "SIZO-2", "IK-2 Pokrov", "IK-6", "SIZO-5 Vodnik"]
_encoder = msgspec.json.Encoder()


def _day(d: dt.date) -> str:
    return d.isoformat()


class _Story:
    """The events of one case, each with the time it was reported."""

    def __init__(self, rng: random.Random, case_id: str, size: int) -> None:
        self.rng = rng
        self.case_id = case_id
        self.events: list[tuple[float, dict]] = []
        self._n = 0
        # About one case in six has a correction or retraction: ~2% of all events.
        amend = 1 if size >= 3 and rng.random() < 0.13 else 0
        self._build(size - amend)
        if amend:
            self._amend(self._facts, self._day, self._t)

    def _add(self, type_: str, on: dt.date, reported: float, **fields) -> dict:
        self._n += 1
        rng = self.rng
        event = {
            "type": type_,
            "event_id": f"{self.case_id}-{self._n:04d}",
            "case_id": self.case_id,
            "occurred_on": _day(on) if rng.random() > 0.05 else _day(on)[:7],
            "sources": [{"publisher": rng.choice(PUBLISHERS), "url": f"https://example.org/{self.case_id}/{self._n}",
                         "reliability": rng.choice(["confirmed", "credible", "credible", "unverified"])}],
            **fields,
        }
        self.events.append((reported, event))
        return event

    def _build(self, size: int) -> None:
        rng = self.rng
        span = (LAST_DAY - FIRST_DAY).days
        day = FIRST_DAY + dt.timedelta(days=rng.randrange(span - 30))
        t = (day - FIRST_DAY).days + rng.random()
        self._add(
            "case_opened", day, t,
            person={"name": f"Person {self.case_id}", "birth_year": rng.randint(1950, 2004)},
            jurisdiction="BY" if rng.random() < 0.15 else "RU",
            region=rng.choice(REGIONS), tags=["anti-war"] if rng.random() < 0.5 else [],
        )
        code, article, part, points = rng.choice(ARTICLES)
        charge = {"code": code, "article": article, "part": part, "points": points}
        facts: list[dict] = []

        def step(days_max: int) -> None:
            nonlocal day, t
            day = min(LAST_DAY, day + dt.timedelta(days=rng.randint(1, days_max)))
            t = max(t, (day - FIRST_DAY).days) + rng.random()

        def late() -> float:
            # A late report arrives well after events that happened after it.
            return t + (rng.uniform(30, 400) if rng.random() < 0.05 else rng.random())

        wanted = rng.random() < 0.08
        step(3)
        if wanted:
            facts.append(self._add("wanted", day, late(), authority="Investigative Committee"))
        else:
            facts.append(self._add("detained", day, late(), authority=rng.choice(["FSB", "police", "SK"])))
        facts.append(self._add("charged", day, late(), charges=[charge]))
        if not wanted:
            step(3)
            measure = rng.choices(["custody", "house_arrest", "restrictions", "bail"], [70, 15, 10, 5])[0]
            facts.append(self._add("remanded", day, late(), measure=measure, court=rng.choice(COURTS)))
        extra = max(0, size - 4 - 6)
        while extra > 0:
            step(60)
            kind = rng.random()
            if kind < 0.4:
                until = day + dt.timedelta(days=90)
                facts.append(self._add("remand_extended", day, late(), until=_day(until)))
            elif kind < 0.65:
                facts.append(self._add("transferred", day, late(), facility=rng.choice(FACILITIES)))
            elif kind < 0.8:
                facts.append(self._add("ill_treatment_reported", day, late(),
                                       kind=rng.choice(["beating", "threats", "solitary_confinement"])))
            elif kind < 0.9:
                facts.append(self._add("recognized", day, late(), organization=rng.choice(ORGS)))
            elif kind < 0.93:
                facts.append(self._add("charges_amended", day, late(), charges=[charge, {"code": code, "article": "280.3", "part": "2"}]))
            elif kind < 0.95:
                facts.append(self._add("recognition_withdrawn", day, late(), organization=rng.choice(ORGS)))
            elif kind < 0.975:
                facts.append(self._add("ill_treatment_reported", day, late(), kind="threats"))
            else:
                self._amend(facts, day, t)
            extra -= 1
        remaining = size - self._n
        if remaining > 0:
            step(120)
            facts.append(self._add("trial_started", day, late(), court=rng.choice(COURTS)))
        if size - self._n > 0:
            step(90)
            punishment = rng.choices(["imprisonment", "suspended_sentence", "fine", "restriction_of_freedom"],
                                     [70, 15, 10, 5])[0]
            facts.append(self._add("sentenced", day, late(), court=rng.choice(COURTS), punishment=punishment,
                                   term_months=rng.randint(12, 120) if punishment != "fine" else None,
                                   regime="general" if punishment == "imprisonment" else None,
                                   in_absentia=wanted, charges=[charge]))
        if size - self._n > 0:
            step(90)
            facts.append(self._add("appeal_decided", day, late(), court="Appeal Court",
                                   outcome=rng.choices(["upheld", "reduced", "overturned"], [80, 15, 5])[0]))
        if size - self._n > 0:
            step(400)
            if rng.random() < 0.02:
                facts.append(self._add("died", day, late(), in_custody=True))
            else:
                facts.append(self._add("released", day, late(),
                                       reason=rng.choice(["sentence_served", "parole", "exchange"])))
        while size - self._n > 0:  # what the short stories above left over
            step(30)
            if rng.random() < 0.02:
                self._amend(facts, day, t)
            else:
                facts.append(self._add("transferred", day, late(), facility=rng.choice(FACILITIES)))
        self._facts, self._day, self._t = facts, day, t

    def _amend(self, facts: list[dict], day: dt.date, t: float) -> None:
        """A correction or a retraction of an earlier fact of this case."""
        rng = self.rng
        target = rng.choice(facts)
        reported = max(r for r, e in self.events if e is target) + rng.uniform(1, 60)
        if rng.random() < 0.6:
            replacement = {k: v for k, v in target.items() if k != "event_id"}
            replacement["sources"] = [{"publisher": rng.choice(PUBLISHERS), "reliability": "confirmed"}]
            self._add("event_corrected", day, reported, target_event_id=target["event_id"],
                      replacement=replacement)
        else:
            self._add("event_retracted", day, reported, target_event_id=target["event_id"],
                      reason="the source withdrew the report")


def _sizes(rng: random.Random, events: int, mean: float) -> Iterator[int]:
    """Case sizes with a heavy tail: most cases small, a few very busy."""
    total = 0
    while total < events:
        size = min(int(rng.paretovariate(1.6) * mean * 0.2) + 4, 2000)
        size = min(size, events - total)
        total += size
        yield size


def generate(events: int, seed: int = 1, events_per_case: float = 10.0) -> list[dict]:
    """`events` events in arrival order (cases interleaved by the time they were reported)."""
    rng = random.Random(seed)
    stories = []
    for i, size in enumerate(_sizes(rng, events, events_per_case)):
        stories.append(_Story(rng, f"c{seed}-{i:06d}", size))
    timed = [(reported, n, event) for story in stories for n, (reported, event) in enumerate(story.events)]
    opened_at = {e["case_id"]: r for r, _, e in timed if e["type"] == "case_opened"}
    # Nothing of a case is reported before it was opened.
    timed = [(max(r, opened_at[e["case_id"]] + 1e-6 * (n + 1)), n, e) for r, n, e in timed]
    timed.sort(key=lambda item: item[0])
    return [e for _, _, e in timed][:events]


def encoded(events: list[dict]) -> list[bytes]:
    return [_encoder.encode(e) for e in events]
