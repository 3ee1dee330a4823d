"""The derived case status (EVENTS.md, "Derived case status"): one pure walk.

`derive_status` is the whole rule: effective events, sorted by (lower bound of
`occurred_on`, `seq`), folded one by one by `CaseFold.apply`. The live projector
uses the same `CaseFold`: an event that sorts after everything a case has walked
is applied to the case's fold directly; anything else makes it walk the case again
from its history. Bitemporal questions (`on`, `known_at`) call `derive_status`.

Decisions where EVENTS.md is silent:
- An `appeal_decided` with a new punishment sets custody as `sentenced` would, with
  the `in_absentia` of the sentence it revises (a person sentenced in absentia is
  still sought after an appeal in absentia).
- An `appeal_decided` merges into a sentence in force; with none in force (none
  recorded yet, or cleared by `overturned`/`sent_back`) the sentence stays null.
- The same charge (by display form) is listed once, also within `charges_amended`.
- `name`, `jurisdiction` and `region` come from the last `case_opened` walked (a
  correction may turn another event into one).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import msgspec

from projections.effective import Record, Version, effective
from schemas.dates import lower_bound
from schemas.events import (
    AppealDecided,
    CaseClosed,
    CaseOpened,
    Charge,
    Charged,
    ChargesAmended,
    Detained,
    Died,
    FactEvent,
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

IN_CUSTODY = "in_custody"
DECEASED = "deceased"
CUSTODY_BY_MEASURE = {
    "custody": IN_CUSTODY,
    "house_arrest": "house_arrest",
    "restrictions": "restricted",
    "bail": "restricted",
    "none": "at_liberty",
}
RELEASES_THAT_CLOSE = frozenset({"acquitted", "charges_dropped", "sentence_served"})


class Sentence(msgspec.Struct, kw_only=True):
    punishment: str | None = None
    term_months: int | None = None
    regime: str | None = None


class Recognition(msgspec.Struct, kw_only=True):
    """An organisation's stance on a case: its latest recognition or withdrawal in the walk."""

    organization: str
    recognized: bool
    designation: str | None = None
    recognized_on: str | None = None
    withdrawn_on: str | None = None
    reason: str | None = None
    statement_url: str | None = None


class CaseStatus(msgspec.Struct, kw_only=True):
    """The keys of the derived status in EVENTS.md, in its order."""

    case_id: str
    name: str | None
    custody: str | None
    stage: str | None
    charges: list[str]
    recognized_by: list[str]
    custody_since: str | None
    days_in_custody: int
    sentence: Sentence | None
    last_event_on: str | None
    events: int
    as_of_seq: int | None = None


def sentenced_custody(punishment: str, in_absentia: bool) -> str:
    if punishment == "imprisonment":
        return "wanted" if in_absentia else IN_CUSTODY
    if punishment == "restriction_of_freedom":
        return "restricted"
    return "at_liberty"


class CaseFold:
    """What the walk of one case has built so far; `apply` is one step of the table."""

    __slots__ = (
        "case_id",
        "name",
        "jurisdiction",
        "region",
        "custody",
        "stage",
        "charges",
        "charge_forms",
        "recognitions",
        "recognized_by",
        "custody_since",
        "closed_custody_days",
        "sentence",
        "sentence_in_absentia",
        "last_event_on",
        "last_key",
        "events",
    )

    def __init__(self, case_id: str) -> None:
        self.case_id = case_id
        self.name: str | None = None
        self.jurisdiction: str | None = None
        self.region: str | None = None
        self.custody: str | None = None
        self.stage: str | None = None
        self.charges: list[Charge] = []
        self.charge_forms: list[str] = []  # their display forms, in the same order
        self.recognitions: dict[str, Recognition] = {}
        self.recognized_by: list[str] = []  # kept sorted as recognitions change
        self.custody_since: dt.date | None = None
        # Days of in_custody spells that have ended; the open one is counted on asking.
        self.closed_custody_days = 0
        self.sentence: Sentence | None = None
        self.sentence_in_absentia = False
        self.last_event_on: str | None = None
        self.last_key: tuple[dt.date, int] | None = None  # (lower bound, seq) last walked
        self.events = 0

    def follows(self, day: dt.date, seq: int) -> bool:
        """Whether an event sorts after everything walked, so it can be applied in place."""
        return self.last_key is None or (day, seq) > self.last_key

    def count_earlier(self, event: FactEvent) -> None:
        """Walk an event of a NEUTRAL type that sorts before the last one walked.

        It changes neither custody nor stage nor anything else the status keeps, and
        is not the last event: walking the case again would only count it.
        """
        assert isinstance(event, NEUTRAL)
        self.events += 1

    def _custody(self, custody: str, day: dt.date) -> None:
        if self.custody == DECEASED or custody == self.custody:
            return  # death is final; an unchanged custody continues its spell
        if self.custody == IN_CUSTODY and self.custody_since is not None:
            self.closed_custody_days += max(0, (day - self.custody_since).days)
            self.custody_since = None
        if custody == IN_CUSTODY:
            self.custody_since = day
        self.custody = custody

    def _add_charges(self, charges: Iterable[Charge]) -> None:
        for charge in charges:
            form = charge.display
            if form not in self.charge_forms:
                self.charge_forms.append(form)
                self.charges.append(charge)

    def apply(self, seq: int, event: FactEvent, day: dt.date | None = None) -> None:
        """Walk one effective event; `day` is its lower bound, when already known."""
        if day is None:
            day = lower_bound(event.occurred_on)
        self.last_key = (day, seq)
        self.last_event_on = event.occurred_on
        self.events += 1
        step = _STEPS.get(type(event))
        if step is not None:  # remand_extended, ill_treatment_reported: neither custody nor stage
            step(self, event, day)

    # One method per row of the EVENTS.md table, looked up by the event's class.

    def _case_opened(self, event: CaseOpened, day: dt.date) -> None:
        self.name = event.person.name
        self.jurisdiction = event.jurisdiction
        self.region = event.region
        if self.custody is None:
            self._custody("at_liberty", day)
        if self.stage is None:
            self.stage = "investigation"

    def _in_custody(self, event: Detained | Transferred, day: dt.date) -> None:
        self._custody(IN_CUSTODY, day)

    def _charged(self, event: Charged, day: dt.date) -> None:
        self._add_charges(event.charges)

    def _charges_amended(self, event: ChargesAmended, day: dt.date) -> None:
        self.charges = []
        self.charge_forms = []
        self._add_charges(event.charges)

    def _remanded(self, event: Remanded, day: dt.date) -> None:
        self._custody(CUSTODY_BY_MEASURE[event.measure], day)

    def _trial_started(self, event: TrialStarted, day: dt.date) -> None:
        self.stage = "trial"

    def _sentenced(self, event: Sentenced, day: dt.date) -> None:
        self._custody(sentenced_custody(event.punishment, event.in_absentia), day)
        self.stage = "sentenced"
        self.sentence = Sentence(
            punishment=event.punishment, term_months=event.term_months, regime=event.regime
        )
        self.sentence_in_absentia = event.in_absentia

    def _released(self, event: Released, day: dt.date) -> None:
        self._custody("at_liberty", day)
        if event.reason in RELEASES_THAT_CLOSE:
            self.stage = "closed"

    def _wanted(self, event: Wanted, day: dt.date) -> None:
        self._custody("wanted", day)

    def _recognized(self, event: Recognized, day: dt.date) -> None:
        previous = self.recognitions.get(event.organization)
        self.recognitions[event.organization] = Recognition(
            organization=event.organization,
            recognized=True,
            designation=event.designation,
            recognized_on=event.occurred_on,
            withdrawn_on=previous.withdrawn_on if previous else None,
            reason=previous.reason if previous else None,
            statement_url=event.statement_url,
        )
        self._recognitions_changed()

    def _recognitions_changed(self) -> None:
        self.recognized_by = sorted(org for org, r in self.recognitions.items() if r.recognized)

    def _recognition_withdrawn(self, event: RecognitionWithdrawn, day: dt.date) -> None:
        previous = self.recognitions.get(event.organization)
        self.recognitions[event.organization] = Recognition(
            organization=event.organization,
            recognized=False,
            designation=previous.designation if previous else None,
            recognized_on=previous.recognized_on if previous else None,
            withdrawn_on=event.occurred_on,
            reason=event.reason,
            statement_url=previous.statement_url if previous else None,
        )
        self._recognitions_changed()

    def _died(self, event: Died, day: dt.date) -> None:
        self._custody(DECEASED, day)

    def _case_closed(self, event: CaseClosed, day: dt.date) -> None:
        self._custody("at_liberty", day)
        self.stage = "closed"

    def _appeal(self, event: AppealDecided, day: dt.date) -> None:
        if event.outcome == "overturned":
            self._custody("at_liberty", day)
        elif event.punishment is not None:
            self._custody(sentenced_custody(event.punishment, self.sentence_in_absentia), day)
        if event.outcome in ("overturned", "sent_back"):
            self.stage = "closed" if event.outcome == "overturned" else "trial"
            self.sentence = None
            self.sentence_in_absentia = False
        elif self.sentence is not None:
            if event.punishment is not None:
                self.sentence.punishment = event.punishment
            if event.term_months is not None:
                self.sentence.term_months = event.term_months
            if event.regime is not None:
                self.sentence.regime = event.regime

    # -- what the walk says

    def days_in_custody(self, on: dt.date) -> int:
        """Closed spells, plus the open one up to but not including `on`."""
        days = self.closed_custody_days
        if self.custody == IN_CUSTODY and self.custody_since is not None:
            days += max(0, (on - self.custody_since).days)
        return days

    def status(self, on: dt.date, as_of_seq: int | None = None) -> CaseStatus:
        return CaseStatus(
            case_id=self.case_id,
            name=self.name,
            custody=self.custody,
            stage=self.stage,
            charges=list(self.charge_forms),
            recognized_by=list(self.recognized_by),
            custody_since=self.custody_since.isoformat() if self.custody_since else None,
            days_in_custody=self.days_in_custody(on),
            sentence=msgspec.structs.replace(self.sentence) if self.sentence else None,
            last_event_on=self.last_event_on,
            events=self.events,
            as_of_seq=as_of_seq,
        )


_STEPS = {
    CaseOpened: CaseFold._case_opened,
    Detained: CaseFold._in_custody,
    Transferred: CaseFold._in_custody,
    Charged: CaseFold._charged,
    ChargesAmended: CaseFold._charges_amended,
    Remanded: CaseFold._remanded,
    TrialStarted: CaseFold._trial_started,
    Sentenced: CaseFold._sentenced,
    AppealDecided: CaseFold._appeal,
    Released: CaseFold._released,
    Wanted: CaseFold._wanted,
    Recognized: CaseFold._recognized,
    RecognitionWithdrawn: CaseFold._recognition_withdrawn,
    Died: CaseFold._died,
    CaseClosed: CaseFold._case_closed,
}


# Types the table leaves out: they change only the count of events walked.
NEUTRAL = (RemandExtended, IllTreatmentReported)


def walk(case_id: str, events: Iterable[Version], on: dt.date | None = None) -> CaseFold:
    """Fold effective events (already sorted) that lie on or before `on`."""
    fold = CaseFold(case_id)
    for version in events:
        day = version.day
        if on is not None and day > on:
            break  # sorted by lower bound: nothing later qualifies
        fold.apply(version.seq, version.fact, day)  # type: ignore[arg-type]
    return fold


def derive_status(
    case_id: str,
    records: Iterable[Record],
    *,
    on: dt.date,
    known_at: dt.datetime | None = None,
    as_of_seq: int | None = None,
) -> CaseStatus | None:
    """The status of a case on `on` as the log stood at `known_at`; None if it did not exist."""
    fold = walk(case_id, effective(records, known_at), on)
    if fold.events == 0:
        return None
    return fold.status(on, as_of_seq)
