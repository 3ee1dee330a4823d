"""Partial ISO dates (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) as the vocabulary writes them.

A partial date keeps its precision in its length; it is ordered by its lower bound
(`2022-03` -> 2022-03-01, `2022` -> 2022-01-01).
"""

from __future__ import annotations

import datetime as dt
import functools
import re

_PARTIAL = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_FULL = re.compile(r"\d{4}-\d{2}-\d{2}")

# Earliest year accepted: records of Soviet-era prosecutions reach back this far.
MIN_YEAR = 1900


class BadDate(ValueError):
    """A date string that is not a real (partial) date, or lies in the future."""


@functools.lru_cache(maxsize=1 << 16)  # the same days recur across many events
def lower_bound(value: str) -> dt.date:
    """The first day a partial date can mean. The value must already be valid."""
    n = len(value)
    if n == 10:
        return dt.date.fromisoformat(value)
    if n == 7:
        return dt.date(int(value[:4]), int(value[5:7]), 1)
    return dt.date(int(value[:4]), 1, 1)


@functools.lru_cache(maxsize=1 << 16)  # the same days recur across many events
def parse_partial(value: str) -> dt.date:
    """Check a partial date and return its lower bound; raise BadDate otherwise."""
    m = _PARTIAL.fullmatch(value)
    if m is None:
        raise BadDate(f"{value!r} is not a date of the form YYYY, YYYY-MM or YYYY-MM-DD")
    year, month, day = m.groups()
    try:
        bound = dt.date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise BadDate(f"{value!r} is not a real date") from None
    if bound.year < MIN_YEAR:
        raise BadDate(f"{value!r} is before {MIN_YEAR}")
    return bound


def parse_full(value: str) -> dt.date:
    """Check a full `YYYY-MM-DD` date; raise BadDate otherwise."""
    if _FULL.fullmatch(value) is None:
        raise BadDate(f"{value!r} is not a full date of the form YYYY-MM-DD")
    return parse_partial(value)


def check_not_future(value: str, today: dt.date) -> None:
    """A partial date may not begin after `today` (the recording day, UTC)."""
    if parse_partial(value) > today:
        raise BadDate(f"{value!r} lies after the recording day {today.isoformat()}")


def utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def utc_now_rfc3339() -> str:
    """Recording time: UTC, microseconds, `Z` suffix (RFC 3339)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(value: str) -> dt.datetime:
    """Parse an RFC 3339 / ISO 8601 time; a naive time is taken as UTC."""
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
