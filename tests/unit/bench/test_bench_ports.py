"""free_port (projector.bench.common, used by the tests too): ports a worker binds later, never ones an outgoing
connection may take first."""

from __future__ import annotations

import socket

from projector.bench.common import _GIVEN, ephemeral_ports, free_port


def test_ports_are_outside_the_ephemeral_range_and_bindable():
    ephemeral = ephemeral_ports()
    for _ in range(50):
        port = free_port()
        assert port not in ephemeral
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_is_never_handed_out_twice():
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert set(ports) <= _GIVEN


def test_a_pair_is_free_on_both_ports():
    port = free_port(pair_offset=1)
    assert port + 1 in _GIVEN and port + 1 not in ephemeral_ports()
    for p in (port, port + 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_the_kernel_gives_outgoing_connections_ephemeral_ports():
    """Why: a connection's local port comes from the ephemeral range, the range binding port 0 draws from."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", free_port()))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            assert client.getsockname()[1] in ephemeral_ports()


def test_a_broker_base_has_every_port_it_needs_free_and_outside_the_ephemeral_range():
    from projector.bench.common import free_ports

    base = free_ports([0, 1, 2, 100, 101, 102])
    for p in (base, base + 1, base + 2, base + 100, base + 101, base + 102):
        assert p in _GIVEN and p not in ephemeral_ports()
