"""The case event vocabulary, wire format v1 (`design/EVENTS.md`), as msgspec Structs.

One Struct per event type, tagged on `type`, in one union (`Event`). Decoding is
strict: unknown fields are errors. The structure (types, enums, required fields,
lengths) is enforced by msgspec while decoding; the rules that need the recording
day or that have their own rejection codes (identifier patterns, real dates,
trimming) live in `schemas.validation`.

Evolution rules: new fields get defaults; a field's type never changes; a field is
never renamed; enum values are only added.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

# Lengths a documentation team needs and no more: they bound an event to 64 KiB.
Text = Annotated[str, Meta(max_length=4000)]
Name = Annotated[str, Meta(max_length=500)]
Url = Annotated[str, Meta(max_length=2000)]
Short = Annotated[str, Meta(max_length=200)]
Token = Annotated[str, Meta(max_length=64)]
Months = Annotated[int, Meta(ge=0, le=12 * 100)]

Reliability = Literal["confirmed", "credible", "unverified"]
Measure = Literal["custody", "house_arrest", "restrictions", "bail", "none"]
Punishment = Literal[
    "imprisonment",
    "suspended_sentence",
    "restriction_of_freedom",
    "compulsory_labour",
    "fine",
    "compulsory_treatment",
    "other",
]
Regime = Literal["settlement", "general", "reinforced", "strict", "special", "prison"]
Instance = Literal["appeal", "cassation", "supervisory"]
AppealOutcome = Literal["upheld", "reduced", "increased", "overturned", "sent_back"]
ReleaseReason = Literal[
    "sentence_served",
    "acquitted",
    "charges_dropped",
    "measure_eased",
    "parole",
    "pardon",
    "amnesty",
    "exchange",
    "other",
]
Designation = Literal["political_prisoner", "politically_persecuted", "prisoner_of_conscience"]
IllTreatment = Literal[
    "torture", "beating", "denial_of_medical_care", "solitary_confinement", "threats", "other"
]
CloseReason = Literal["charges_dropped", "acquitted", "statute_of_limitations", "death", "other"]


class _Part(Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A nested object of an event: strict like the events themselves.

    `gc=False` (here and on events): plain data never forms reference cycles, and
    the collector need not walk millions of them.
    """


class Source(_Part):
    publisher: Name
    url: Url | None = None
    title: Name | None = None
    published_on: Token | None = None
    reliability: Reliability = "credible"


class Charge(_Part):
    code: Token
    article: Token
    part: Token | None = None
    points: Annotated[list[Token], Meta(max_length=40)] = []
    title: Name | None = None
    max_years: Annotated[float, Meta(ge=0, le=100)] | None = None

    @property
    def display(self) -> str:
        """`RU-CC 207.3(2)(a,b,e)`: code, article, (part), (points)."""
        text = f"{self.code} {self.article}"
        if self.part:
            text += f"({self.part})"
        if self.points:
            text += f"({','.join(self.points)})"
        return text


class Person(_Part):
    name: Name
    name_original: Name | None = None
    aliases: Annotated[list[Name], Meta(max_length=50)] = []
    birth_year: int | None = None
    birthplace: Name | None = None


class Fine(_Part):
    amount: Annotated[float, Meta(ge=0)]
    currency: Annotated[str, Meta(pattern="^[A-Z]{3}$")]


Sources = Annotated[list[Source], Meta(min_length=1, max_length=50)]
Charges = Annotated[list[Charge], Meta(min_length=1, max_length=50)]
OptionalCharges = Annotated[list[Charge], Meta(max_length=50)]


class EventBase(Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type", gc=False):
    """The common fields of every event.

    `event_id` is required at the top level and absent in a correction's
    `replacement` (which keeps the id of the event it corrects); UNSET lets one
    Struct serve both, and `schemas.validation` enforces which applies.
    """

    event_id: str | UnsetType = UNSET
    case_id: str
    occurred_on: str
    circa: bool = False
    sources: Sources
    note: Text | None = None
    expected_version: Annotated[int, Meta(ge=0)] | None = None

    @property
    def type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class CaseOpened(EventBase, tag="case_opened", kw_only=True):
    person: Person
    jurisdiction: Annotated[str, Meta(max_length=2)]
    region: Name | None = None
    occupation: Name | None = None
    case_name: Name | None = None
    tags: Annotated[list[Short], Meta(max_length=50)] = []


class Detained(EventBase, tag="detained", kw_only=True):
    place: Name | None = None
    authority: Name | None = None
    circumstances: Text | None = None


class Charged(EventBase, tag="charged", kw_only=True):
    charges: Charges


class ChargesAmended(EventBase, tag="charges_amended", kw_only=True):
    charges: Charges


class Remanded(EventBase, tag="remanded", kw_only=True):
    measure: Measure
    court: Name | None = None
    until: Token | None = None


class RemandExtended(EventBase, tag="remand_extended", kw_only=True):
    until: Token
    court: Name | None = None


class TrialStarted(EventBase, tag="trial_started", kw_only=True):
    court: Name


class Sentenced(EventBase, tag="sentenced", kw_only=True):
    court: Name
    punishment: Punishment
    term_months: Months | None = None
    regime: Regime | None = None
    fine: Fine | None = None
    in_absentia: bool = False
    charges: OptionalCharges = []


class AppealDecided(EventBase, tag="appeal_decided", kw_only=True):
    court: Name
    instance: Instance = "appeal"
    outcome: AppealOutcome
    punishment: Punishment | None = None
    term_months: Months | None = None
    regime: Regime | None = None
    fine: Fine | None = None


class Transferred(EventBase, tag="transferred", kw_only=True):
    facility: Name
    region: Name | None = None


class Released(EventBase, tag="released", kw_only=True):
    reason: ReleaseReason


class Wanted(EventBase, tag="wanted", kw_only=True):
    authority: Name | None = None


class Recognized(EventBase, tag="recognized", kw_only=True):
    organization: Name
    designation: Designation = "political_prisoner"
    statement_url: Url | None = None


class RecognitionWithdrawn(EventBase, tag="recognition_withdrawn", kw_only=True):
    organization: Name
    reason: Text | None = None


class IllTreatmentReported(EventBase, tag="ill_treatment_reported", kw_only=True):
    kind: IllTreatment
    description: Text | None = None


class Died(EventBase, tag="died", kw_only=True):
    in_custody: bool
    cause: Text | None = None


class CaseClosed(EventBase, tag="case_closed", kw_only=True):
    reason: CloseReason


FactEvent = Union[
    CaseOpened,
    Detained,
    Charged,
    ChargesAmended,
    Remanded,
    RemandExtended,
    TrialStarted,
    Sentenced,
    AppealDecided,
    Transferred,
    Released,
    Wanted,
    Recognized,
    RecognitionWithdrawn,
    IllTreatmentReported,
    Died,
    CaseClosed,
]


class EventCorrected(EventBase, tag="event_corrected", kw_only=True):
    target_event_id: str
    replacement: FactEvent


class EventRetracted(EventBase, tag="event_retracted", kw_only=True):
    target_event_id: str
    reason: Text


Event = Union[FactEvent, EventCorrected, EventRetracted]

FACT_TYPES: tuple[type[EventBase], ...] = FactEvent.__args__  # type: ignore[attr-defined]
EVENT_TYPES: tuple[type[EventBase], ...] = Event.__args__  # type: ignore[attr-defined]
TYPE_NAMES: tuple[str, ...] = tuple(t.__struct_config__.tag for t in EVENT_TYPES)  # type: ignore[misc]
EVENT_CLASS: dict[str, type[EventBase]] = dict(zip(TYPE_NAMES, EVENT_TYPES))
AMENDMENT_TYPES = (EventCorrected, EventRetracted)

# Built once: the strict wire decoder and the canonical encoder.
event_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def canonical_bytes(event: EventBase) -> bytes:
    """The canonical encoding: declared field order, `type` first, defaults written out.

    Two submissions are the same content exactly when their canonical bytes are
    equal, whatever their key order or omitted defaults.
    """
    return _encoder.encode(event)
