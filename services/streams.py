"""The two streams: their expected configuration, `streams ensure`, and drift reports.

Stream configuration lives here only: services never declare streams, and an
existing stream is never rewritten silently; a difference is reported as drift.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from schemas.validation import MAX_EVENT_BYTES
from services import subjects
from services.settings import Settings

# A record is the event plus its envelope (hashes, times, identity): room for both.
MAX_RECORD_BYTES = MAX_EVENT_BYTES + 8 * 1024


def log_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=subjects.LOG_STREAM,
        description="casetrail: the append-only log of case events (one subject per case)",
        subjects=[subjects.LOG_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        max_msgs_per_subject=-1,
        max_msg_size=MAX_RECORD_BYTES,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_s,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
        allow_atomic=True,
    )


def rejects_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=subjects.REJECTS_STREAM,
        description="casetrail: every refused submission, its code, message and original bytes",
        subjects=[subjects.REJECTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        max_msgs_per_subject=-1,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_s,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
    )


# The fields whose value matters to casetrail's guarantees, compared on `ensure`.
CHECKED_FIELDS = (
    "subjects",
    "retention",
    "storage",
    "discard",
    "max_msgs",
    "max_bytes",
    "max_age",
    "max_msgs_per_subject",
    "max_msg_size",
    "num_replicas",
    "duplicate_window",
    "deny_delete",
    "deny_purge",
    "allow_rollup_hdrs",
    "allow_direct",
    "allow_atomic",
)


class Drift(msgspec.Struct, frozen=True):
    field: str
    expected: Any
    actual: Any


class StreamReport(msgspec.Struct, frozen=True):
    stream: str
    outcome: str  # "created" | "ok" | "drift"
    drift: list[Drift] = []


def _normal(value: Any) -> Any:
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def compare(expected: StreamConfig, actual: StreamConfig) -> list[Drift]:
    drift = []
    for name in CHECKED_FIELDS:
        want = _normal(getattr(expected, name))
        have = _normal(getattr(actual, name))
        if name.startswith(("allow_", "deny_")):  # unset and false mean the same
            want, have = bool(want), bool(have)
        if want != have:
            drift.append(Drift(name, want, have))
    return drift


async def ensure_one(js: JetStreamContext, expected: StreamConfig) -> StreamReport:
    try:
        info = await js.stream_info(expected.name)  # type: ignore[arg-type]
    except NotFoundError:
        await js.add_stream(expected)
        return StreamReport(expected.name, "created")  # type: ignore[arg-type]
    drift = compare(expected, info.config)
    return StreamReport(expected.name, "drift" if drift else "ok", drift)  # type: ignore[arg-type]


async def ensure_streams(js: JetStreamContext, settings: Settings) -> list[StreamReport]:
    """Create missing streams; verify existing ones and report any drift."""
    return [
        await ensure_one(js, log_config(settings)),
        await ensure_one(js, rejects_config(settings)),
    ]
