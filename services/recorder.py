"""`casetrail serve recorder`: the FastStream service in front of `services.recording`.

It answers `casetrail.intake.<publisher>` in the `casetrail-recorders` queue group;
the last token of the subject is the publisher's identity (NATS permissions let each
publisher publish only there). Start as many as you like: they share nothing but
the log.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas.intake import reply_encoder
from services import subjects
from services.connection import broker_options, close_connection, connect
from services.recording import Recorder, ServiceUnavailable
from services.runtime import run_until_signalled, tune_gc
from services.settings import Settings

log = logging.getLogger("casetrail.recorder")

# Requests handled at once by one recorder; cases are locked one by one inside.
CONCURRENCY = 16


class ServiceError(msgspec.Struct):
    code: str
    message: str


class ErrorReply(msgspec.Struct):
    error: ServiceError


def unavailable(message: str) -> bytes:
    return msgspec.json.encode(ErrorReply(ServiceError("unavailable", message)))


class Submission(msgspec.Struct, frozen=True):
    """What the intake handler is given: the subject's publisher and the raw body."""

    publisher: str
    body: bytes


async def _submission(message: NatsMessage) -> Submission:  # type: ignore[valid-type]
    raw = message.raw_message  # type: ignore[attr-defined]
    return Submission(subjects.last_token(raw.subject), raw.data)


class RecorderService:
    """The recorder's FastStream broker and the Recorder it hands submissions to."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.recorder: Recorder | None = None
        self.broker = NatsBroker(
            # The handler takes the decoded Submission as it is: no injection, whose
            # context lookups FastDepends would run in a worker thread per message.
            apply_types=False,
            max_reconnect_attempts=-1,
            name="casetrail-recorder-intake",
            log_level=logging.DEBUG,  # one line per message is too much at INFO
            **broker_options(settings),  # servers, credentials, TLS
        )
        self.broker.subscriber(
            subjects.INTAKE_ALL,
            queue=subjects.RECORDER_QUEUE,
            decoder=_submission,
            max_workers=CONCURRENCY,
            title="intake",
            description="Submit one event or {'events': [...]}; one result per event.",
        )(self.intake)

    async def intake(self, submission: Submission) -> bytes:
        publisher, body = submission.publisher, submission.body
        assert self.recorder is not None
        try:
            reply = await self.recorder.submit(publisher, body)
        except ServiceUnavailable as exc:
            log.warning("submission from %s not recorded: %s", publisher, exc)
            return unavailable(str(exc))
        except Exception:  # a bug must cost one answer, never the service
            log.exception("submission from %s failed", publisher)
            return unavailable(
                "internal error; the outcome is unknown: resubmit unchanged "
                "(the same event ids are never recorded twice)"
            )
        return reply_encoder.encode(reply)

    async def start(self) -> None:
        # The recorder reads the log before the intake subscription starts.
        nc = await connect(self.settings, "casetrail-recorder-log")
        self.recorder = Recorder(
            nc,
            nc.jetstream(timeout=self.settings.request_timeout_s),
            # How long an append waits for JetStream's ack before re-reading the log.
            publish_timeout=self.settings.request_timeout_s,
        )
        await self.recorder.start()
        await self.broker.start()
        # FastStream subscribes in the background: wait until intake answers.
        for _ in range(500):
            try:
                await self.broker.connection.request(
                    subjects.intake("probe"), b'{"events":[]}', timeout=1
                )
                return
            except (NoRespondersError, NatsTimeout):
                await asyncio.sleep(0.01)
        raise RuntimeError("the recorder's intake subscription did not start")

    async def stop(self) -> None:
        await self.broker.stop()
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            await recorder.stop()
            await close_connection(recorder.nc)


async def serve(settings: Settings) -> None:
    tune_gc()
    service = RecorderService(settings)
    await run_until_signalled(service.start, service.stop, "recorder")
