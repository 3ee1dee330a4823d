"""The embedded nats-server starts on ports picked at run time, and on others when one
it picked was taken before the server could bind it (a picked port is free only when
it is picked: any socket may take it next)."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest

from services.natsserver import NatsServer, NatsServerError, free_port


def _occupy(port: int) -> socket.socket:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    return blocker


async def test_a_server_whose_picked_port_was_taken_meanwhile_starts_on_another(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    taken = server.port
    with _occupy(taken):
        server.start()
        try:
            await server.wait_ready(timeout=30)
            assert server.port != taken
            nc = await nats.connect(server.url)
            try:
                assert (await nc.jetstream().account_info()).streams == 0
            finally:
                await nc.close()
        finally:
            server.stop()
    assert not server.running


async def test_a_server_given_a_port_in_use_fails_and_says_where_to_look(tmp_path: Path) -> None:
    port = free_port()
    with _occupy(port):
        server = NatsServer(tmp_path / "nats", port=port).start()
        try:
            with pytest.raises(NatsServerError, match="exited with"):
                await server.wait_ready(timeout=30)
            assert server.port == port  # a port it was given is not swapped for another
        finally:
            server.stop()
