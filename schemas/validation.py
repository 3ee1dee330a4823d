"""Turning submitted bytes into a valid, normalised event, or a coded rejection.

Decisions where EVENTS.md is silent (written down here, as it asks):
- Every string is trimmed; an optional string that is empty after trimming is
  treated as absent (null). Enum values must be written exactly.
- Length limits (`schemas.events`) apply to the submitted string.
- `jurisdiction` is upper-cased and must be an ISO 3166-1 alpha-2 code
  (`schemas.countries`).
- Charge points are lower-cased; Cyrillic points are written in Latin letters by
  their place in the alphabet of legal enumeration (which skips ё, й, ъ, ы, ь):
  а→a, б→b, в→c, г→d, д→e, е→f, ж→g, ...
- Dates lie in 1900 or later. `occurred_on` and `published_on` may not begin after
  the recording day (UTC); `until` may lie ahead. A `birth_year` may not lie ahead.
- A correction's `replacement` carries no `event_id` and no `expected_version`, and
  names the same `case_id` as the correction (`schema` otherwise).
- An empty `event_id` or `case_id` breaks the identifier pattern (`bad_id`).
"""

from __future__ import annotations

import datetime as dt
import re

import msgspec
from msgspec import UNSET, Struct

from schemas.countries import ISO_3166_ALPHA2
from schemas.dates import MIN_YEAR, BadDate, parse_full, parse_partial
from schemas.errors import Code, Rejected
from schemas.events import (
    CaseOpened,
    Charge,
    Event,
    EventBase,
    EventCorrected,
    EventRetracted,
    Remanded,
    RemandExtended,
    event_decoder,
)

MAX_EVENT_BYTES = 64 * 1024
MAX_BATCH_EVENTS = 1000

EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
CASE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")

_CYRILLIC_POINTS = "абвгдежзиклмнопрстуфхцчшщэюя"
_POINT_TO_LATIN = {c: chr(ord("a") + i) for i, c in enumerate(_CYRILLIC_POINTS[:26])}

_ID_FIELDS = frozenset({"event_id", "case_id", "target_event_id"})
_MSGSPEC_PATH = re.compile(r"^(.*?)(?: - at `(\$[^`]*)`)?$", re.S)


# How each field of a Struct is trimmed, worked out once per class.
_STR, _OPT_STR, _ID, _STRUCT, _STR_LIST, _STRUCT_LIST = range(6)


def _kind(t: msgspec.inspect.Type) -> int | None:
    inspect = msgspec.inspect
    if isinstance(t, inspect.StrType):
        return _STR
    if isinstance(t, inspect.StructType):
        return _STRUCT
    if isinstance(t, inspect.ListType):
        item = _kind(t.item_type)
        return {_STR: _STR_LIST, _STRUCT: _STRUCT_LIST}.get(item)  # type: ignore[arg-type]
    if isinstance(t, inspect.UnionType):
        kinds = {_kind(x) for x in t.types} - {None}
        if kinds == {_STR}:
            return _OPT_STR
        if kinds == {_STRUCT}:
            return _STRUCT
    return None  # numbers, booleans, enum values: nothing to trim


def _trim_plan(cls: type[Struct]) -> tuple[tuple[str, int], ...]:
    plan = []
    for f in msgspec.inspect.type_info(cls).fields:
        kind = _ID if f.name in _ID_FIELDS else _kind(f.type)
        if kind is not None:
            plan.append((f.name, kind))
    return tuple(plan)


_PLANS: dict[type, tuple[tuple[str, int], ...]] = {}


class _Findings:
    """Collects what is wrong and keeps the one EVENTS.md says to report first."""

    __slots__ = ("first",)

    def __init__(self) -> None:
        self.first: Rejected | None = None

    def add(self, code: Code, path: str, message: str) -> None:
        found = Rejected(code, f"`{path}`: {message}")
        if self.first is None or found.rank < self.first.rank:
            self.first = found


def _trim(obj: Struct, path: str, findings: _Findings) -> None:
    """Trim every string in place; flag empty required ones; empty optional ones become null."""
    cls = type(obj)
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _trim_plan(cls)
    for name, kind in plan:
        value = getattr(obj, name)
        if value is None:
            continue
        if kind <= _ID:
            if not isinstance(value, str):
                continue  # an UNSET event_id: reported by the id check
            text = value.strip()
            if not text and kind != _ID:
                if kind == _STR:
                    findings.add(Code.SCHEMA, f"{path}.{name}", "must not be empty")
                else:
                    text = None  # type: ignore[assignment]
            if text is not value:
                setattr(obj, name, text)
        elif kind == _STRUCT:
            _trim(value, f"{path}.{name}", findings)
        elif kind == _STR_LIST:
            for i, item in enumerate(value):
                text = item.strip()
                if not text:
                    findings.add(Code.SCHEMA, f"{path}.{name}[{i}]", "must not be empty")
                value[i] = text
        else:
            for i, item in enumerate(value):
                _trim(item, f"{path}.{name}[{i}]", findings)


def _check_id(value: object, pattern: re.Pattern[str], path: str, findings: _Findings) -> None:
    if value is UNSET:
        findings.add(Code.SCHEMA, path, "missing required field")
    elif not isinstance(value, str) or pattern.fullmatch(value) is None:
        findings.add(
            Code.BAD_ID, path, f"{value!r} does not match the pattern {pattern.pattern}"
        )


def _no_later_than(value: str, today: dt.date, path: str, field: str, findings: _Findings) -> None:
    try:
        if parse_partial(value) <= today:
            return
        problem = f"{value!r} lies after the recording day {today.isoformat()}"
    except BadDate as exc:
        problem = str(exc)
    findings.add(Code.BAD_DATE, f"{path}.{field}", problem)


def _full_date(value: str | None, path: str, findings: _Findings) -> None:
    if value is not None:
        try:
            parse_full(value)
        except BadDate as exc:
            findings.add(Code.BAD_DATE, f"{path}.until", str(exc))


def _normalise_charges(charges: list[Charge]) -> None:
    for charge in charges:
        if charge.points:
            charge.points = [
                "".join(_POINT_TO_LATIN.get(c, c) for c in p.lower()) for p in charge.points
            ]


def _check_fact(event: EventBase, path: str, today: dt.date, findings: _Findings) -> None:
    """The rules shared by a top-level event and a correction's replacement."""
    if CASE_ID.fullmatch(event.case_id) is None:
        _check_id(event.case_id, CASE_ID, f"{path}.case_id", findings)
    _no_later_than(event.occurred_on, today, path, "occurred_on", findings)
    for i, source in enumerate(event.sources):
        if source.published_on is not None:
            _no_later_than(source.published_on, today, path, f"sources[{i}].published_on", findings)
    kind = type(event)
    if kind is CaseOpened:
        _check_opening(event, path, today, findings)  # type: ignore[arg-type]
    elif kind is Remanded or kind is RemandExtended:
        _full_date(event.until, path, findings)  # type: ignore[attr-defined]
    charges = getattr(event, "charges", None)
    if charges:
        _normalise_charges(charges)


def _check_opening(event: CaseOpened, path: str, today: dt.date, findings: _Findings) -> None:
    event.jurisdiction = event.jurisdiction.upper()
    if event.jurisdiction not in ISO_3166_ALPHA2:
        findings.add(
            Code.SCHEMA,
            f"{path}.jurisdiction",
            f"{event.jurisdiction!r} is not an ISO 3166-1 alpha-2 country code",
        )
    year = event.person.birth_year
    if year is not None and not MIN_YEAR <= year <= today.year:
        findings.add(
            Code.BAD_DATE,
            f"{path}.person.birth_year",
            f"{year} is not a year between {MIN_YEAR} and {today.year}",
        )


def validate(event: Event, today: dt.date) -> Event:
    """Normalise `event` in place and check the rules beyond its structure.

    Raises the Rejected that EVENTS.md's precedence puts first.
    """
    findings = _Findings()
    _trim(event, "$", findings)
    _check_id(event.event_id, EVENT_ID, "$.event_id", findings)
    _check_fact(event, "$", today, findings)
    if isinstance(event, EventCorrected | EventRetracted):
        _check_id(event.target_event_id, EVENT_ID, "$.target_event_id", findings)
    if isinstance(event, EventCorrected):
        replacement = event.replacement
        if replacement.event_id is not UNSET:
            findings.add(
                Code.SCHEMA,
                "$.replacement.event_id",
                "a replacement keeps the id of the event it corrects: leave event_id out",
            )
        if replacement.expected_version is not None:
            findings.add(
                Code.SCHEMA, "$.replacement.expected_version", "not allowed in a replacement"
            )
        if replacement.case_id != event.case_id:
            findings.add(
                Code.SCHEMA,
                "$.replacement.case_id",
                f"{replacement.case_id!r} differs from the correction's case_id {event.case_id!r}",
            )
        _check_fact(replacement, "$.replacement", today, findings)
    if findings.first is not None:
        raise findings.first
    return event


def _from_msgspec(exc: msgspec.ValidationError) -> Rejected:
    text, path = _MSGSPEC_PATH.match(str(exc)).groups()  # type: ignore[union-attr]
    path = path or "$"
    if path == "$" and text.startswith("Expected `object`"):
        return Rejected(Code.MALFORMED, f"`$`: an event must be a JSON object ({text})")
    return Rejected(Code.SCHEMA, f"`{path}`: {text[0].lower()}{text[1:]}")


def decode_event(raw: bytes, today: dt.date) -> Event:
    """Decode and validate one submitted event; raise Rejected with its code."""
    if len(raw) > MAX_EVENT_BYTES:
        raise Rejected(
            Code.TOO_LARGE, f"`$`: the event is {len(raw):,} bytes; the limit is {MAX_EVENT_BYTES:,}"
        )
    try:
        event = event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _from_msgspec(exc) from None
    except msgspec.DecodeError as exc:
        raise Rejected(Code.MALFORMED, f"`$`: not valid JSON ({exc})") from None
    except RecursionError:  # msgspec stops at the interpreter's recursion limit
        raise Rejected(
            Code.MALFORMED, "`$`: nested too deeply (more than about 1,000 levels of arrays or objects)"
        ) from None
    return validate(event, today)
