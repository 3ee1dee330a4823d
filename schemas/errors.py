"""Rejection codes: stable, part of the public contract (EVENTS.md, "Rejections")."""

from __future__ import annotations

import enum


class Code(enum.StrEnum):
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    SCHEMA = "schema"
    BAD_ID = "bad_id"
    BAD_DATE = "bad_date"
    EVENT_ID_CONFLICT = "event_id_conflict"
    UNKNOWN_CASE = "unknown_case"
    CASE_EXISTS = "case_exists"
    UNKNOWN_TARGET = "unknown_target"
    VERSION_CONFLICT = "version_conflict"


# When several rules are broken, the first in this order is reported.
PRECEDENCE: tuple[Code, ...] = tuple(Code)
_RANK = {code: i for i, code in enumerate(PRECEDENCE)}


class Rejected(Exception):
    """An event the log refuses, with its stable code and a message naming the field."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def rank(self) -> int:
        return _RANK[self.code]

    def __repr__(self) -> str:
        return f"Rejected({self.code.value!r}, {self.message!r})"
