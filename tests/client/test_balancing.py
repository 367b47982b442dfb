"""The client spreads calls over every address of its target (round_robin), as behind a headless Service."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from client import StylizeClient
from tests.conftest import free_port


@pytest.fixture()
def two_replicas() -> Iterator[list[int]]:
    """Two health servers, told apart by their status: one SERVING, one NOT_SERVING."""
    servers, ports = [], []
    for status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING):
        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        servicer.set("", status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port(f"127.0.0.1:{free_port()}"))
        server.start()
        servers.append(server)
    yield ports
    for server in servers:
        server.stop(None)


def test_calls_reach_every_address_of_the_target(two_replicas: list[int]) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in two_replicas)  # what DNS gives for 2 pods
    with StylizeClient(target, timeout_s=10) as client:
        answers: set[str] = set()
        deadline = time.monotonic() + 10  # until both replicas have answered (each connects on its own)
        while answers != {"SERVING", "NOT_SERVING"} and time.monotonic() < deadline:
            answers.add(client.health())
    assert answers == {"SERVING", "NOT_SERVING"}, "pick_first would send every call to one replica"
