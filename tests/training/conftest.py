"""Helpers of the training tests that start processes."""

import socket

import pytest


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def free_ports():
    """free_ports(count): that many TCP ports on 127.0.0.1 free right now,
    for the workers of a MultiWorkerMirroredStrategy cluster."""
    return _free_ports


@pytest.fixture(scope="module")
def free_ports_module():
    """`free_ports` for module-scoped fixtures."""
    return _free_ports
