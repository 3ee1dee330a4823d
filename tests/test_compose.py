"""compose.yaml is coherent with the repository: its files, its NATS configuration, its commands.

There is no Docker engine here; what can be checked without one is: the YAML, every
file it mounts, that nats-server accepts the shipped configuration with exactly the
environment compose gives each node, and that every service runs a real `casetrail`
command. The cluster tests run the same configuration files as local processes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import typer.testing
import yaml

from services.cli import app
from services.natsserver import binary
from tests.helpers import ROOT

NATSCONF = ROOT / "services" / "natsconf"
NODES = {"nats1", "nats2", "nats3"}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


COMPOSE = load("compose.yaml")
AUTH = load("compose.auth.yaml")
SERVICES = COMPOSE["services"]


def binds(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of each bind mount (a source starting with . or /)."""
    found = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            found.append((source, target))
    return found


def host_path(service: dict, container_path: str) -> Path | None:
    """The repository file that a container path of `service` is mounted from."""
    for source, target in sorted(binds(service), key=lambda b: -len(b[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (ROOT / source / os.path.relpath(container_path, target)).resolve()
    return None


def includes(conf: Path) -> set[Path]:
    """A configuration file and every file it includes, transitively."""
    seen = {conf}
    for name in re.findall(r'^\s*include\s+"([^"]+)"', conf.read_text(), re.MULTILINE):
        seen |= includes(conf.parent / name)
    return seen


def test_compose_runs_a_three_node_jetstream_cluster_from_the_shipped_files() -> None:
    nodes = {name for name, s in SERVICES.items() if s["image"].startswith("nats:")}
    assert nodes == NODES
    volumes, names, routes = set(), set(), set()
    for name in sorted(nodes):
        node = SERVICES[name]
        env = node["environment"]
        conf = host_path(node, node["command"][-1])
        assert conf is not None and conf.exists() and conf.parent == NATSCONF, conf
        files = includes(conf)
        assert {f.name for f in files} >= {"cluster.conf", "server.conf", "auth.conf", "tls.conf"}
        assert all(f.exists() for f in files)
        # Every variable the configuration reads, compose sets for this node.
        used = set().union(*(re.findall(r"\$(NATS_[A-Z_]+)", f.read_text()) for f in files))
        assert used <= set(env), used - set(env)
        assert env["NATS_SYNC_INTERVAL"] == "always"
        assert env["NATS_SERVER_NAME"] == name
        names.add(env["NATS_SERVER_NAME"])
        routes.add(env["NATS_ROUTES"])
        # Its own named volume holds the JetStream store.
        (store,) = [
            v.split(":")[0] for v in node["volumes"] if v.split(":")[1] == env["NATS_STORE_DIR"]
        ]
        assert store in COMPOSE["volumes"]
        volumes.add(store)
        health = " ".join(node["healthcheck"]["test"])
        assert f":{env['NATS_HTTP_PORT']}/healthz?js-enabled-only=true" in health
        for source, _ in binds(node):
            assert (ROOT / source).exists(), source
    assert len(volumes) == 3 and len(names) == 3
    (route_list,) = routes
    port = SERVICES["nats1"]["environment"]["NATS_CLUSTER_PORT"]
    assert sorted(re.findall(r"nats://([a-z0-9]+):(\d+)", route_list)) == [
        (n, port) for n in sorted(NODES)
    ]


@pytest.mark.parametrize("node", sorted(NODES))
def test_nats_server_accepts_the_configuration_compose_gives_each_node(
    node: str, tmp_path: Path
) -> None:
    service = SERVICES[node]
    conf_dir = tmp_path / "nats"
    shutil.copytree(NATSCONF, conf_dir)
    env = {k: str(v) for k, v in service["environment"].items()}
    env["NATS_STORE_DIR"] = str(tmp_path / "store")
    done = subprocess.run(  # noqa: PLW1510 (the exit code is asserted)
        [binary(), "-t", "-c", str(conf_dir / Path(service["command"][-1]).name)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr + done.stdout


def resolve(args: list[str]):
    """The CLI command `args` names, with its options parsed as casetrail would parse them."""
    assert args[0] == "casetrail", args
    command = typer.main.get_command(app)
    ctx = command.make_context("casetrail", list(args[1:]))
    while hasattr(command, "resolve_command"):  # a group: descend to the named command
        remaining = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, rest = command.resolve_command(ctx, remaining)
        assert sub is not None, f"no command {name!r} in {args}"
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return command


def test_every_casetrail_service_runs_a_real_command() -> None:
    apps = {name: s for name, s in SERVICES.items() if name not in NODES}
    assert {"streams", "recorder-1", "recorder-2", "projector", "api"} <= set(apps)
    for name, service in apps.items():
        command = resolve(service["command"])
        assert command.callback is not None, name
        assert (ROOT / service["build"] / "Dockerfile").exists()
        env = service["environment"]
        urls = env["CASETRAIL_NATS_URL"].split(",")
        assert {u.split("//")[1] for u in urls} == {
            f"{n}:{SERVICES[n]['environment']['NATS_PORT']}" for n in NODES
        }
        assert env["CASETRAIL_REPLICAS"] == "3"  # R3 streams
    assert [s["command"][1:3] for s in apps.values()].count(["serve", "recorder"]) == 2
    # The streams exist before any service starts; they start once every node is healthy.
    assert {n: c["condition"] for n, c in apps["streams"]["depends_on"].items()} == dict.fromkeys(
        NODES, "service_healthy"
    )
    for name, service in apps.items():
        if name != "streams":
            assert service["depends_on"]["streams"]["condition"] == "service_completed_successfully"
    projector = apps["projector"]["command"]
    db = projector[projector.index("--db") + 1]
    (volume,) = [
        v.split(":")[0] for v in apps["projector"]["volumes"] if db.startswith(v.split(":")[1])
    ]
    assert volume in COMPOSE["volumes"]
    # The image holds every package the project ships.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert all(f"COPY {p} ./{p}" in dockerfile for p in ("schemas", "projections", "services"))


def test_compose_auth_mounts_what_auth_init_writes_and_gives_each_service_its_role(
    tmp_path: Path,
) -> None:
    result = typer.testing.CliRunner().invoke(app, ["auth", "init", str(tmp_path / "secrets")])
    assert result.exit_code == 0, result.output
    roles = {"streams": "operator", "recorder-1": "recorder", "recorder-2": "recorder",
             "projector": "projector", "api": "reporter"}  # fmt: skip
    for name, override in AUTH["services"].items():
        assert name in SERVICES
        for source, target in binds(override):
            assert source.startswith("./secrets/")
            assert (tmp_path / source).exists(), source
        if name in NODES:
            # The users replace the empty auth.conf that server.conf includes.
            (target,) = [t for _, t in binds(override)]
            assert host_path(SERVICES[name], target) == NATSCONF / "auth.conf"
        else:
            creds = override["environment"]["CASETRAIL_CREDENTIALS"]
            (source,) = [s for s, t in binds(override) if t == creds]
            assert Path(source).name == f"{roles[name]}.nk"
    assert set(AUTH["services"]) == set(SERVICES)
