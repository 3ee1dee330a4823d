"""The query interface of the projector: `casetrail.query.<name>` request/reply.

Requests are JSON objects (unknown fields are errors); every answer carries
`as_of_seq`, the last log position the projection had applied. A request may
carry `min_seq`: the projector then waits (at most `MAX_WAIT_S`, or the request's
shorter `wait_s`) until it has applied that position, so a client reads its own writes.

| name | request | answer |
|---|---|---|
| `status` | `case_id`, `on`, `known_at` | the derived status (EVENTS.md keys) |
| `timeline` | `case_id`, `on`, `known_at`, `history` | `{"as_of_seq", "case_id", "timeline": [...]}` |
| `cases` | the filters, `on`, `known_at`, `limit`, `offset` | `{"as_of_seq", "total", "cases": [...]}` |
| `stats` | | `{"as_of_seq", "cases", "events", "records", "by_custody", ...}` |
| `sql` | `query` (one read-only SELECT), `limit` | `{"as_of_seq", "columns", "rows", "truncated"}` (`projections.sql`) |
| `report` | `on` | the summary report (`projections.report`) |
| `health` | | lag, apply times, rejections (`services.health`) |

A refusal is `{"error": {"code", "message"}, "as_of_seq"}` with code `bad_request`,
`not_found`, `not_caught_up` (min_seq not reached in time) or `unavailable`.
`on` is a date (`YYYY-MM-DD`); `known_at` an RFC 3339 time (a bare date means its
midnight, UTC).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas.dates import BadDate, parse_full, parse_rfc3339
from services import subjects

NAMES = ("status", "timeline", "cases", "stats", "sql", "report")
QUEUE = "casetrail-projectors"
MAX_WAIT_S = 10.0


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    min_seq: int | None = None
    wait_s: float | None = None  # how long min_seq may wait; at most MAX_WAIT_S

    def wait_bound(self) -> float:
        return MAX_WAIT_S if self.wait_s is None else max(0.0, min(self.wait_s, MAX_WAIT_S))


class _AsOf(_Request, kw_only=True):
    on: str | None = None
    known_at: str | None = None

    def on_date(self) -> dt.date | None:
        if self.on is None:
            return None
        try:
            return parse_full(self.on)
        except BadDate as exc:
            raise QueryError("bad_request", f"`on`: {exc}") from None

    def known_at_time(self) -> dt.datetime | None:
        if self.known_at is None:
            return None
        try:
            return parse_rfc3339(self.known_at)
        except ValueError:
            raise QueryError(
                "bad_request", f"`known_at`: {self.known_at!r} is not an RFC 3339 time"
            ) from None


class StatusRequest(_AsOf, kw_only=True):
    case_id: str


class TimelineRequest(_AsOf, kw_only=True):
    case_id: str
    history: bool = False


class CasesRequest(_AsOf, kw_only=True):
    custody: str | None = None
    stage: str | None = None
    recognized_by: str | None = None
    article: str | None = None
    jurisdiction: str | None = None
    region: str | None = None
    limit: int = 100
    offset: int = 0


class StatsRequest(_Request, kw_only=True):
    pass


class SqlRequest(_Request, kw_only=True):
    query: str
    limit: int = 1000


class ReportRequest(_AsOf, kw_only=True):
    """`on` only: the report is of a day (`known_at` is refused)."""


REQUESTS: dict[str, type[_Request]] = {
    "status": StatusRequest,
    "timeline": TimelineRequest,
    "cases": CasesRequest,
    "stats": StatsRequest,
    "sql": SqlRequest,
    "report": ReportRequest,
}


class QueryError(Exception):
    """A refusal: a stable code and a message that says what to change."""

    def __init__(self, code: str, message: str, as_of_seq: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.as_of_seq = as_of_seq


def error_reply(exc: QueryError) -> bytes:
    return msgspec.json.encode(
        {"error": {"code": exc.code, "message": exc.message}, "as_of_seq": exc.as_of_seq}
    )


_decoders = {name: msgspec.json.Decoder(cls) for name, cls in REQUESTS.items()}


def decode_request(name: str, body: bytes) -> _Request:
    try:
        return _decoders[name].decode(body or b"{}")
    except msgspec.DecodeError as exc:
        raise QueryError("bad_request", str(exc)) from None


class QueryClient:
    """Asks the projector; answers are plain JSON values, refusals raise QueryError."""

    def __init__(self, nc: Client, timeout: float = MAX_WAIT_S + 5) -> None:
        self.nc = nc
        self.timeout = timeout

    async def ask(self, name: str, **fields: Any) -> Any:
        return await self._request(subjects.query(name), fields)

    async def admin(self, name: str, **fields: Any) -> Any:
        """An operator request to the projector (`casetrail.admin.<name>`, services.admin)."""
        return await self._request(subjects.admin(name), fields)

    async def _request(self, subject: str, fields: dict[str, Any]) -> Any:
        body = msgspec.json.encode({k: v for k, v in fields.items() if v is not None})
        try:
            reply = await self.nc.request(subject, body, timeout=self.timeout)
        except NoRespondersError:
            raise QueryError("unavailable", "no projector answers queries; is it running?") from None
        except NatsTimeout:
            raise QueryError("unavailable", f"the projector did not answer within {self.timeout:.0f}s") from None
        answer = msgspec.json.decode(reply.data)
        if isinstance(answer, dict) and "error" in answer:
            error = answer["error"]
            raise QueryError(error["code"], error["message"], answer.get("as_of_seq"))
        return answer

    async def status(self, case_id: str, **options: Any) -> dict:
        return await self.ask("status", case_id=case_id, **options)

    async def timeline(self, case_id: str, **options: Any) -> dict:
        return await self.ask("timeline", case_id=case_id, **options)

    async def cases(self, **options: Any) -> dict:
        return await self.ask("cases", **options)

    async def stats(self, **options: Any) -> dict:
        return await self.ask("stats", **options)

    async def sql(self, query: str, **options: Any) -> dict:
        return await self.ask("sql", query=query, **options)

    async def report(self, **options: Any) -> dict:
        return await self.ask("report", **options)

    async def health(self) -> dict:
        return await self.ask("health")
