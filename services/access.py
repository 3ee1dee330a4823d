"""Access control: one NATS user per role, each allowed only what its role needs.

Users authenticate with nkeys: the server's `auth.conf` holds public keys only; each
identity's seed is a file of its own (mode 0600) in a credentials directory, and a
process is given the one it runs as (`CASETRAIL_CREDENTIALS`). Every identity gets
a private inbox prefix (`_INBOX.<public key>`), so no one can read the replies meant
for another (query answers, intake results).

Roles (NATS denies whatever a list does not allow):
- publisher `<name>`: submit on `casetrail.intake.<name>` only; the name the log
  records as `recorded_by` is therefore the identity's own.
- recorder: answer intake (queue group), write `casetrail.log.*` and
  `casetrail.rejects.*.*`, read the log. The only writer of the log.
- projector: read the log (and the size of the rejects), answer `casetrail.query.*`
  and the operator's `casetrail.admin.*` (replay, snapshots).
- reporter: ask queries; writes nothing (the HTTP API runs as a reporter).
- operator: streams (create, inspect), read everything, ask queries and the
  projector's `casetrail.admin.*`; cannot write
  the log or the rejects, nor submit as a publisher other than `operator`.
Nobody may delete, purge or reconfigure a stream or delete a message from one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from services import subjects
from services.client import PUBLISHER_NAME

ROLES = ("publisher", "recorder", "projector", "reporter", "operator")
SERVICE_ROLES = ("recorder", "projector", "reporter", "operator")
CREDENTIALS_SUFFIX = ".nk"

_LOG, _REJECTS = subjects.LOG_STREAM, subjects.REJECTS_STREAM

# Reading the log: stream info, direct gets, ordered (ephemeral) and durable consumers.
READ_LOG = [
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",  # nats-py finds a consumer's stream by its subject
    f"$JS.API.STREAM.INFO.{_LOG}",
    f"$JS.API.STREAM.MSG.GET.{_LOG}",
    f"$JS.API.DIRECT.GET.{_LOG}",
    f"$JS.API.DIRECT.GET.{_LOG}.>",
    f"$JS.API.CONSUMER.CREATE.{_LOG}",
    f"$JS.API.CONSUMER.CREATE.{_LOG}.>",
    f"$JS.API.CONSUMER.DURABLE.CREATE.{_LOG}.>",
    f"$JS.API.CONSUMER.INFO.{_LOG}.>",
    f"$JS.API.CONSUMER.DELETE.{_LOG}.>",
    f"$JS.API.CONSUMER.MSG.NEXT.{_LOG}.>",
    f"$JS.ACK.{_LOG}.>",
    f"$JS.FC.{_LOG}.>",
]
# What no one may do to the evidence (the streams also deny purge and message deletes).
# An update could set limits (max_msgs, max_age, discard old) that drop old records.
DESTROY = [
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.STREAM.UPDATE.>",
]
PROBES = [subjects.intake("probe"), subjects.intake("up-probe")]


def inbox_prefix(public_key: str) -> str:
    return f"_INBOX.{public_key}"


def permissions(role: str, public_key: str, publisher: str | None = None) -> dict:
    """The NATS permissions of one identity."""
    inbox = f"{inbox_prefix(public_key)}.>"
    if role == "publisher":
        if publisher is None:
            raise ValueError("a publisher identity needs its name")
        return {"publish": {"allow": [subjects.intake(publisher)]}, "subscribe": {"allow": [inbox]}}
    if role == "recorder":
        return {
            "publish": {
                "allow": [subjects.LOG_ALL, subjects.REJECTS_ALL, f"$JS.API.STREAM.INFO.{_REJECTS}"]
                + READ_LOG
                + PROBES[:1],
                "deny": DESTROY,
            },
            "subscribe": {"allow": [subjects.INTAKE_ALL, inbox]},
            "allow_responses": True,
        }
    if role == "projector":
        return {
            "publish": {"allow": [*READ_LOG, f"$JS.API.STREAM.INFO.{_REJECTS}"], "deny": DESTROY},
            "subscribe": {
                "allow": [f"{subjects.QUERY_PREFIX}.*", f"{subjects.ADMIN_PREFIX}.*", inbox]
            },
            "allow_responses": True,
        }
    if role == "reporter":
        return {
            "publish": {"allow": [f"{subjects.QUERY_PREFIX}.*"]},
            "subscribe": {"allow": [inbox]},
        }
    if role == "operator":
        return {
            "publish": {
                "allow": [
                    "$JS.API.>",
                    "$JS.ACK.>",
                    "$JS.FC.>",
                    f"{subjects.QUERY_PREFIX}.*",
                    f"{subjects.ADMIN_PREFIX}.*",
                    subjects.intake("operator"),
                    *PROBES,
                ],
                "deny": DESTROY,
            },
            "subscribe": {"allow": [">"]},
        }
    raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")


def new_seed() -> str:
    """A fresh user nkey seed (`SU...`)."""
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def public_key(seed: str) -> str:
    return nkeys.from_seed(bytearray(seed.strip().encode())).public_key.decode()


@dataclass(frozen=True)
class Identity:
    """One NATS user: its role, publisher name (publishers only) and seed."""

    role: str
    seed: str
    publisher: str | None = None

    @property
    def name(self) -> str:
        return f"publisher-{self.publisher}" if self.role == "publisher" else self.role

    @property
    def public_key(self) -> str:
        return public_key(self.seed)


def auth_conf(identities: list[Identity]) -> str:
    """The server's `authorization` block (JSON is valid NATS configuration)."""
    users = [
        {"nkey": i.public_key, "permissions": permissions(i.role, i.public_key, i.publisher)}
        for i in identities
    ]
    body = json.dumps({"users": users}, indent=2)
    return f"# casetrail roles; generated, public keys only.\nauthorization {body}\n"


def write_private(path: Path, text: str) -> None:
    """Create `path` readable and writable by its owner only (never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


class CredentialStore:
    """A directory of seed files, one per identity; created on first use, then reused."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}{CREDENTIALS_SUFFIX}"

    def ensure(self, publishers: list[str] | tuple[str, ...] = ()) -> list[Identity]:
        """Every service role and the named publishers; existing seeds are kept."""
        for name in publishers:
            if not PUBLISHER_NAME.fullmatch(name):
                raise ValueError(f"publisher name {name!r} must match {PUBLISHER_NAME.pattern}")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)
        wanted = [Identity(role, "") for role in SERVICE_ROLES]
        wanted += [Identity("publisher", "", name) for name in publishers]
        # Publishers added by an earlier run stay valid.
        for path in sorted(self.directory.glob(f"publisher-*{CREDENTIALS_SUFFIX}")):
            name = path.name[len("publisher-") : -len(CREDENTIALS_SUFFIX)]
            if name not in publishers:
                wanted.append(Identity("publisher", "", name))
        identities = []
        for identity in wanted:
            path = self.path(identity.name)
            if path.exists():
                seed = path.read_text().strip()
            else:
                seed = new_seed()
                write_private(path, seed + "\n")
            identities.append(Identity(identity.role, seed, identity.publisher))
        return identities


def tls_conf(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> str:
    """The server's `tls` block: clients must connect with TLS (and check the certificate)."""
    block = {"cert_file": str(cert_file), "key_file": str(key_file), "timeout": 5}
    return (
        f"# casetrail: TLS for client connections; generated.\ntls {json.dumps(block, indent=2)}\n"
    )


__all__ = [
    "ROLES",
    "CredentialStore",
    "Identity",
    "auth_conf",
    "inbox_prefix",
    "new_seed",
    "permissions",
    "public_key",
    "tls_conf",
]
