"""Access control: every role can do its work and nothing else (a real nats-server with auth)."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
import trustme
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas.record import decode_record
from services import subjects
from services.access import CredentialStore, auth_conf, public_key
from services.client import Publisher
from services.connection import auth_options, connect
from services.log import read_log, stream_state
from services.natsserver import NatsServer, free_port
from services.queries import QueryClient
from services.recorder import RecorderService
from services.settings import Settings
from services.streams import ensure_streams
from tests.faults import wait_for_projection
from tests.helpers import ROOT, encode, event, opened, read_until_up
from tests.test_cli import casetrail

CASE = "ru-2022-access"


@dataclass
class Client:
    """A connection as one identity, with the errors the server sent it."""

    nc: nats.NATS
    errors: list[str] = field(default_factory=list)

    async def violations(self, expected: int = 1, timeout: float = 3.0) -> list[str]:
        """Wait until the server has reported `expected` permission violations."""
        await self.nc.flush()
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            found = [e for e in self.errors if "permissions violation" in e.lower()]
            if len(found) >= expected:
                return found
            await asyncio.sleep(0.02)
        return [e for e in self.errors if "permissions violation" in e.lower()]


@dataclass
class Secured:
    server: NatsServer
    store: CredentialStore
    clients: list[Client] = field(default_factory=list)

    def settings(self, identity: str) -> Settings:
        return Settings(nats_url=self.server.url, credentials=str(self.store.path(identity)))

    async def connect(self, identity: str) -> Client:
        client = Client(None)  # type: ignore[arg-type]

        async def collect(exc: Exception) -> None:
            client.errors.append(str(exc))

        client.nc = await connect(self.settings(identity), identity, error_cb=collect)
        self.clients.append(client)
        return client

    async def log_records(self):
        op = await self.connect("operator")
        records = []
        async for chunk in read_log(op.nc.jetstream()):
            records += [decode_record(data, seq) for seq, data in chunk]
        return records


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    store = CredentialStore(tmp_path / "credentials")
    identities = store.ensure(["ovd", "memorial"])
    server = NatsServer(tmp_path / "nats", auth_conf=auth_conf(identities)).start()
    env = Secured(server, store)
    try:
        await server.wait_ready(**auth_options(env.settings("operator")))
        op = await env.connect("operator")
        await ensure_streams(op.nc.jetstream(), env.settings("operator"))
        yield env
    finally:
        for client in env.clients:
            await client.nc.close()
        server.stop()


@pytest.fixture
async def recorder(secured: Secured) -> AsyncIterator[RecorderService]:
    service = RecorderService(secured.settings("recorder"))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def test_credentials_are_private_and_the_server_holds_public_keys_only(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials")
    identities = store.ensure(["ovd"])
    names = sorted(p.name for p in store.directory.iterdir())
    assert names == [
        "operator.nk",
        "projector.nk",
        "publisher-ovd.nk",
        "recorder.nk",
        "reporter.nk",
    ]
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    for path in store.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    conf = auth_conf(identities)
    for identity in identities:
        assert identity.seed not in conf
        assert public_key(identity.seed) in conf
    # Run again (as `up --auth` on the same data): the same keys, and earlier publishers kept.
    again = CredentialStore(tmp_path / "credentials").ensure(["memorial"])
    assert {i.name: i.seed for i in identities}.items() <= {i.name: i.seed for i in again}.items()
    assert "publisher-memorial" in {i.name for i in again}


async def test_a_client_without_credentials_is_refused(secured: Secured) -> None:
    with pytest.raises(Exception, match="(?i)authorization"):
        await nats.connect(secured.server.url, allow_reconnect=False, max_reconnect_attempts=0)


async def test_a_publisher_submits_and_is_recorded_under_its_own_name(secured, recorder) -> None:
    ovd = await secured.connect("publisher-ovd")
    result = await Publisher(ovd.nc, "ovd").submit(opened(CASE))
    assert result.status == "accepted"
    (record,) = await secured.log_records()
    assert record.recorded_by == "ovd"
    assert ovd.errors == []


async def test_a_publisher_cannot_publish_as_another_publisher(secured, recorder) -> None:
    ovd = await secured.connect("publisher-ovd")
    with pytest.raises((NatsTimeout, NoRespondersError)):
        await ovd.nc.request(subjects.intake("memorial"), encode(opened(CASE)), timeout=0.3)
    assert any("casetrail.intake.memorial" in v.lower() for v in await ovd.violations())
    assert await secured.log_records() == []


async def test_a_publisher_cannot_write_the_log_or_the_rejects(secured, recorder) -> None:
    ovd = await secured.connect("publisher-ovd")
    await Publisher(ovd.nc, "ovd").submit(opened(CASE))
    forged = encode({"seq": 2, "event": opened(CASE, "forged")})
    js = ovd.nc.jetstream(timeout=0.3)
    for subject in (subjects.log(CASE), subjects.rejects("schema", "memorial")):
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await js.publish(subject, forged)
    await ovd.nc.publish(subjects.log(CASE), forged)  # fire and forget: refused just the same
    assert len(await ovd.violations(3)) >= 3
    records = await secured.log_records()
    assert [r.event.event_id for r in records] == [f"{CASE}-opened"]
    op = await secured.connect("operator")
    assert (await stream_state(op.nc, subjects.REJECTS_STREAM)).messages == 0


@pytest.mark.parametrize(
    "identity", ["publisher-ovd", "reporter", "projector", "recorder", "operator"]
)
async def test_nobody_can_delete_or_purge_a_stream(secured, recorder, identity: str) -> None:
    ovd = await secured.connect("publisher-ovd")
    await Publisher(ovd.nc, "ovd").submit(opened(CASE))
    client = await secured.connect(identity)
    for api in (
        f"$JS.API.STREAM.DELETE.{subjects.LOG_STREAM}",
        f"$JS.API.STREAM.PURGE.{subjects.LOG_STREAM}",
        f"$JS.API.STREAM.MSG.DELETE.{subjects.LOG_STREAM}",
        f"$JS.API.STREAM.DELETE.{subjects.REJECTS_STREAM}",
        f"$JS.API.STREAM.UPDATE.{subjects.LOG_STREAM}",  # limits that would drop records
    ):
        body = b'{"seq": 1}' if ".MSG." in api else b""
        if ".UPDATE." in api:
            body = encode({"name": subjects.LOG_STREAM, "subjects": [subjects.LOG_ALL], "max_msgs": 1,
                           "discard": "old", "storage": "file", "num_replicas": 1})  # fmt: skip
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await client.nc.request(api, body, timeout=0.3)
    assert len(await client.violations(5)) == 5
    op = await secured.connect("operator")
    assert (await stream_state(op.nc)).messages == 1
    assert (await stream_state(op.nc, subjects.REJECTS_STREAM)).messages == 0


async def test_a_publisher_cannot_read_the_log_queries_or_other_replies(secured, recorder) -> None:
    ovd = await secured.connect("publisher-ovd")
    for subject in (
        subjects.LOG_ALL,  # the log's messages
        f"{subjects.INTAKE_PREFIX}.>",  # other publishers' submissions
        f"{subjects.QUERY_PREFIX}.>",  # queries others ask
        "_INBOX.>",  # replies meant for others (query answers, intake results)
        ">",
    ):
        await ovd.nc.subscribe(subject)
    assert len(await ovd.violations(5)) == 5
    for name in ("status", "cases", "stats", "sql"):
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await ovd.nc.request(subjects.query(name), b"{}", timeout=0.3)
    with pytest.raises((NatsTimeout, NoRespondersError)):
        await ovd.nc.jetstream(timeout=0.3).stream_info(subjects.LOG_STREAM)
    found = await ovd.violations(10)
    assert any("casetrail.query.status" in v.lower() for v in found)
    assert any("$js.api.stream.info" in v.lower() for v in found)


async def test_a_reporter_cannot_write_anything(secured, recorder) -> None:
    reporter = await secured.connect("reporter")
    attempts = [
        subjects.intake("reporter"),
        subjects.intake("ovd"),
        subjects.log(CASE),
        subjects.rejects("schema", "reporter"),
        f"$JS.API.STREAM.CREATE.{subjects.LOG_STREAM}",
        f"$JS.API.STREAM.UPDATE.{subjects.LOG_STREAM}",
        f"$JS.API.CONSUMER.CREATE.{subjects.LOG_STREAM}",
        "$JS.API.STREAM.CREATE.ELSEWHERE",
        "$KV.anything.key",
    ]
    for subject in attempts:
        await reporter.nc.publish(subject, encode(opened(CASE)))
    assert len(await reporter.violations(len(attempts))) == len(attempts)
    assert await secured.log_records() == []
    op = await secured.connect("operator")
    streams = {s.config.name for s in await op.nc.jetstream().streams_info()}
    assert streams == {subjects.LOG_STREAM, subjects.REJECTS_STREAM}


async def test_only_the_recorder_writes_the_log(secured, recorder) -> None:
    """The operator, the projector and the reporter cannot append to the log either."""
    for identity in ("operator", "projector", "reporter"):
        client = await secured.connect(identity)
        await client.nc.publish(subjects.log(CASE), encode({"event": opened(CASE)}))
        assert await client.violations(), identity
    assert await secured.log_records() == []


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=15) as response:
        return json.load(response)


async def test_up_with_auth_and_tls_wires_every_service_and_command(tmp_path: Path) -> None:
    """`casetrail up --auth --tls-*`: the services and the CLI connect with their roles over TLS."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca_pem, cert_pem, key_pem = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    issued.cert_chain_pems[0].write_to_path(str(cert_pem))
    issued.private_key_pem.write_to_path(str(key_pem))
    data, port, http_port = tmp_path / "data", free_port(), free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", "up", "--data", str(data), "--port", str(port),
        "--http-port", str(http_port), "--demo", "--auth", "--publisher", "ovd",
        "--tls-cert", str(cert_pem), "--tls-key", str(key_pem), "--tls-ca", str(ca_pem),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        seen = await read_until_up(proc.stdout)  # type: ignore[arg-type]
        assert b"demo: sample case ru-2022-klokov: 5 accepted" in seen  # as publisher-demo, via TLS
        creds = data / "credentials"
        assert sorted(p.name for p in creds.iterdir()) == [
            "operator.nk", "projector.nk", "publisher-cli.nk", "publisher-demo.nk",
            "publisher-ovd.nk", "recorder.nk", "reporter.nk",
        ]  # fmt: skip
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in creds.iterdir())

        def env(identity: str | None, ca_file: Path | None = ca_pem) -> dict[str, str]:
            return {
                "CASETRAIL_CREDENTIALS": str(creds / f"{identity}.nk") if identity else "",
                "CASETRAIL_TLS_CA": str(ca_file) if ca_file else "",
                "CASETRAIL_REQUEST_TIMEOUT": "3",
            }

        code, out, _ = await casetrail("log", "stats", "--json", "--nats", url, env=env("operator"))
        assert code == 0 and json.loads(out)["records"] == 5
        more = encode(event("detained", "ru-2022-klokov", "ovd-detained-again", "2022-03-17"))
        code, out, _ = await casetrail(
            "ingest",
            "-",
            "--as",
            "ovd",
            "--json",
            "--nats",
            url,
            stdin=more,
            env=env("publisher-ovd"),
        )
        assert code == 0 and json.loads(out)["accepted"] == 1
        # Without credentials, or without trusting the server's CA: no connection (exit 2).
        code, _, err = await casetrail("log", "stats", "--nats", url, env=env(None))
        assert code == 2, err
        code, _, err = await casetrail("log", "stats", "--nats", url, env=env("operator", None))
        assert code == 2 and b"CERTIFICATE_VERIFY_FAILED" in err
        # A publisher's credentials do not let it read the log.
        code, _, err = await casetrail("log", "stats", "--nats", url, env=env("publisher-ovd"))
        assert code == 2 and b"permissions violation" in err
        code, out, _ = await casetrail("log", "stats", "--json", "--nats", url, env=env("operator"))
        assert json.loads(out)["records"] == 6
        # The projector (as projector) answers a reporter, over TLS (a publisher may not
        # ask: test_the_projector_role_follows_the_log_and_answers_reporters_only).
        status = ("query", "status", "ru-2022-klokov", "--min-seq", "6", "--json", "--nats", url)
        code, out, err = await casetrail(*status, env=env("reporter"))
        assert code == 0 and json.loads(out)["events"] == 6, err
        # The HTTP API runs as a reporter, over TLS.
        case = await asyncio.to_thread(get_json, f"http://127.0.0.1:{http_port}/cases/ru-2022-klokov")
        assert case["events"] == 6
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)


async def test_the_projector_role_follows_the_log_and_answers_reporters_only(
    secured, recorder, spawn, sample_lines, tmp_path
) -> None:
    """The projector runs as `projector`; a reporter's and an operator's queries are answered."""
    projector_env = {"CASETRAIL_CREDENTIALS": str(secured.store.path("projector"))}
    spawn(
        "projector",
        "--db",
        str(tmp_path / "p.duckdb"),
        "--nats",
        secured.server.url,
        env=projector_env,
    )
    ovd = await secured.connect("publisher-ovd")
    results = await Publisher(ovd.nc, "ovd").submit_many(sample_lines)
    last = max(r.seq for r in results)  # type: ignore[type-var]
    for identity in ("reporter", "operator"):
        asker = await secured.connect(identity)
        stats = await wait_for_projection(asker.nc, last)
        assert stats["cases"] == 1
        answer = await QueryClient(asker.nc).sql("SELECT count(*) FROM timeline")
        assert answer["rows"] == [[5]]
        assert asker.errors == []
    # The operator's admin requests and a reporter's health question are answered too.
    operator, reporter = await secured.connect("operator"), await secured.connect("reporter")
    status = json.loads(
        (await operator.nc.request(subjects.admin("replay_status"), b"{}", timeout=10)).data
    )
    health = json.loads(
        (await reporter.nc.request(subjects.query("health"), b"{}", timeout=10)).data
    )
    assert isinstance(status, dict) and "error" not in health, (status, health)
    # A publisher is not among those the projector answers: it may not even ask.
    with pytest.raises((NatsTimeout, NoRespondersError)):
        await ovd.nc.request(subjects.query("stats"), b"{}", timeout=0.3)
    assert any("casetrail.query.stats" in v.lower() for v in await ovd.violations())


async def test_a_recorder_restarting_on_a_long_log_reads_it_with_its_role(
    secured, recorder
) -> None:
    """At start a recorder reads the whole log (an ordered consumer): its role allows that."""
    ovd = await secured.connect("publisher-ovd")
    events = [opened(f"ru-2022-long-{i:03d}") for i in range(400)]
    results = await Publisher(ovd.nc, "ovd").submit_many(events)
    assert {r.status for r in results} == {"accepted"}
    second = RecorderService(secured.settings("recorder"))
    await second.start()
    try:
        assert len(second.recorder.index.ids) == 400  # type: ignore[union-attr]
    finally:
        await second.stop()


async def test_only_the_operator_sends_the_projector_admin_requests(secured) -> None:
    """`casetrail.admin.*` (replay, snapshots): the projector answers, only the operator asks."""
    projector = await secured.connect("projector")

    async def answer(msg) -> None:
        await msg.respond(b'{"state": "done"}')

    await projector.nc.subscribe(
        f"{subjects.ADMIN_PREFIX}.*", queue="casetrail-projectors", cb=answer
    )
    # Its health answer counts the rejects by code.
    state = await stream_state(
        projector.nc, subjects.REJECTS_STREAM, subjects_filter=subjects.REJECTS_ALL
    )
    assert state.messages == 0
    operator = await secured.connect("operator")
    reply = await operator.nc.request(subjects.admin("replay_status"), b"{}", timeout=5)
    assert reply.data == b'{"state": "done"}'
    for identity in ("reporter", "publisher-ovd", "recorder"):
        other = await secured.connect(identity)
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await other.nc.request(subjects.admin("replay"), b"{}", timeout=0.3)
        assert any("casetrail.admin.replay" in v.lower() for v in await other.violations()), (
            identity
        )
    assert projector.errors == [] and operator.errors == []
