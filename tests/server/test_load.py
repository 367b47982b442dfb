"""A flood of large concurrent requests, and SIGTERM while calls are in flight: what an unlucky operator sees.

The memory bound the flood checks (README, "Security and limits"): the server's
resident memory stays under its warm level plus max_rpcs x max_message_bytes
(requests gRPC may hold) plus max_concurrent x tile_pixels x 1 KiB (the
working set of one inference, generous for the quality preset).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from client import StylizeClient
from tests.conftest import CONTENT_DIR, encode, metric, start_server, stop_server, wait_until

IN_FLIGHT = 'stylize_requests_in_flight{method="Stylize",protocol="grpc"}'


def large_photo(side: int = 1024) -> bytes:
    image = Image.open(CONTENT_DIR / "kodim23.png").convert("RGB").resize((side, side))
    return encode(np.asarray(image))


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def current_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_a_flood_is_served_or_shed_within_the_memory_bound(model_repo: Path, tmp_path: Path) -> None:
    settings = {
        "STYLIZE_MAX_CONCURRENT": "1",
        "STYLIZE_MAX_QUEUE": "2",
        "STYLIZE_MAX_RPCS": "8",
        "STYLIZE_MAX_MESSAGE_BYTES": str(4 << 20),
        "STYLIZE_TILE_PIXELS": str(1 << 20),
        "STYLIZE_WARMUP_SIDES": "1024",
    }
    server = start_server(model_repo, tmp_path / "server.log", env=settings)
    try:
        data = large_photo()
        with StylizeClient(server.target, timeout_s=120) as client:
            client.stylize(data, "tiny", output_format="jpeg")  # warm: the working set of one 1024 px call
        warm = current_rss_bytes(server.process.pid)
        codes: list[grpc.StatusCode] = []
        lock = threading.Lock()

        def call() -> None:
            with StylizeClient(server.target, timeout_s=120) as client:
                try:
                    client.stylize(data, "tiny", output_format="jpeg")
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=call) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(codes) == 32
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert codes.count(grpc.StatusCode.OK) >= 3 and codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
        bound = warm + 8 * (4 << 20) + 1 * (1 << 20) * 1024
        assert peak_rss_bytes(server.process.pid) < bound
        with StylizeClient(server.target, timeout_s=60) as client:
            assert client.health() == "SERVING" and client.stylize(data, "tiny").width == 1024
    finally:
        stop_server(server)


def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(model_repo: Path, tmp_path: Path) -> None:
    server = start_server(model_repo, tmp_path / "server.log", env={"STYLIZE_GRACE_SECONDS": "30"})
    data = large_photo(1536)  # seconds of work on this CPU
    outcome: dict[str, object] = {}

    def in_flight() -> None:
        with StylizeClient(server.target, timeout_s=120) as client:
            try:
                outcome["width"] = client.stylize(data, "tiny").width
            except grpc.RpcError as exc:
                outcome["error"] = exc.code()

    thread = threading.Thread(target=in_flight)
    thread.start()
    wait_until(lambda: metric(server, IN_FLIGHT) >= 1, "the call in flight")
    server.process.send_signal(signal.SIGTERM)
    with StylizeClient(server.target, timeout_s=10) as client:
        wait_until(lambda: client.health() == "NOT_SERVING", "health NOT_SERVING once SIGTERM arrived")
        try:
            client.list_models()
            raise AssertionError("a new call during the drain was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
    thread.join()
    assert outcome == {"width": 1536}, "the call in flight finished"
    assert server.process.wait(timeout=60) == 0
    stop_server(server)
