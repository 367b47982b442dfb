"""Stylize against the servers a user would pick instead, on the same graph, PNG in and PNG out.

    python -m bench.peers [--rounds 3] [--sequential 3] [--per-client 2]

The newest version of models/great_wave (the fp32 `fast` per-style graph, its path
read from the model repository at run time) served five ways, every one bound to
127.0.0.1 on a free port, every one with ONNX Runtime 1.31.1 (onnxruntime-gpu, its
CPU provider) at the same intra-op thread count:

- Stylize: `python -m server --int8 off` (the fp32 graph, as the peers) from the project's venv,
  called over gRPC by client/;
- KServe 0.21.0's Python model server, Open Inference Protocol over gRPC and REST;
- LitServe 0.2.19 and BentoML 1.4.40, REST with a multipart upload.

The peers run the minimal predictor their documentation shows (bench/peer_servers/:
Pillow decodes, ONNX Runtime runs the graph, Pillow encodes the PNG) from their own
venvs, bench/peers/<name>-venv, made on first use from the exact pins in
bench/peer_servers/<name>.txt; nothing of theirs enters the project's venv.
Triton's in-process wheel is not on PyPI (see TRITON below), so Triton is not run.

Per target: the round trip (one client, sequential) and the images per second of 8
clients at once, in blocks that alternate between the targets, in an order that
rotates each round, so drift on the machine falls on all alike; medians. Every
request count is bounded and every server is stopped at the end, also on failure.
Results go to bench/results/peers.json with the machine they ran on.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import io
import json
import logging
import os
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image

from bench.common import newest_graph, run_concurrently, summary, table, write_result
from bench.serving import THREADS, Server, free_port, png
from client import StylizeClient
from core.repository import read_spec

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MODEL = "great_wave"  # the bundle's `fast` per-style model
SERVERS = Path(__file__).resolve().parent / "peer_servers"
VENVS = Path(__file__).resolve().parent / "peers"  # git-ignored
SIDE = 1024
CLIENTS = 8
READY_S = 600  # a cold venv's first import on a loaded machine is slow
TIMEOUT_S = 600
TRITON = (
    "not run: PyPI's `tritonserver` is a 1.5 kB placeholder (0.0.1.dev0, an sdist whose install raises an error "
    "pointing to NVIDIA's NGC containers); pip finds no other version for Linux x86-64 on any Python, and this "
    "machine has no Docker engine to run the NGC image"
)


def newest_fast_graph() -> tuple[int, Path]:
    """The newest complete version of the `fast` model and its graph, as the model repository lists them."""
    model_dir = MODELS / MODEL
    spec = read_spec(model_dir)
    if spec.preset != "fast" or spec.family != "per_style":
        raise SystemExit(f"{model_dir} is {spec.family} {spec.preset!r}, not the per-style `fast` preset")
    graph = newest_graph(model_dir, spec.graphs[0].file)
    return int(graph.parent.name), graph


def venv(name: str) -> Path:
    """bench/peers/<name>-venv with exactly bench/peer_servers/<name>.txt, made (or remade) when that changes."""
    requirements = SERVERS / f"{name}.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    target = VENVS / f"{name}-venv"
    marker = target / f".installed-{digest}"
    if not marker.exists():
        print(f"making {target} from {requirements.name} (once; minutes)", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(target)], check=True)
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        log = VENVS / "logs" / f"{name}-pip.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            subprocess.run([*pip, "-r", str(requirements)], check=True, stdout=out, stderr=subprocess.STDOUT)
        marker.touch()
    return target / "bin"


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}: not ready after {READY_S} s; see {log}")


@dataclass
class Peer:
    """One peer server process (and the children it forks, in its own process group)."""

    name: str
    command: list[str]
    ready_path: str
    env: dict[str, str]
    ports: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = VENVS / "logs" / f"{self.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=SERVERS,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_http(f"http://127.0.0.1:{self.ports[0]}{self.ready_path}", self.process, log)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # its own group: the workers it forked go too
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def peers(model: Path) -> dict[str, Peer]:
    env = {"PEER_MODEL": str(model), "PEER_THREADS": str(THREADS), "PYTHONPATH": str(SERVERS)}
    kserve_http, kserve_grpc, lit, bento = (free_port() for _ in range(4))
    bentoml_env = {**env, "BENTOML_HOME": str(VENVS / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"}
    return {
        "kserve": Peer(
            "kserve",
            [str(venv("kserve") / "python"), "kserve_server.py", str(kserve_http), str(kserve_grpc)],
            "/v2/health/ready",
            env,
            [kserve_http, kserve_grpc],
        ),
        "litserve": Peer(
            "litserve", [str(venv("litserve") / "python"), "litserve_server.py", str(lit)], "/health", env, [lit]
        ),
        "bentoml": Peer(
            "bentoml",
            [str(venv("bentoml") / "bentoml"), "serve", "bentoml_server:Stylize", "--host", "127.0.0.1"]
            + ["--port", str(bento)],
            "/readyz",
            bentoml_env,
            [bento],
        ),
    }


# Clients: one per thread, each a callable sending the PNG and returning the PNG that comes back.

Call = Callable[[], bytes]


def http_call(port: int, path: str, body: bytes, headers: dict[str, str], unpack: Callable[..., bytes]) -> Call:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)  # kept alive between calls

    def call() -> bytes:
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # uvicorn closes a keep-alive connection idle for 5 s (as between blocks): reconnect once
            connection.close()
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status}: {data[:300]!r}")
        return unpack(data, response)

    return call


def multipart(field_name: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="photo.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def oip_messages(kserve_python: Path) -> tuple[Any, Any]:
    """The Open Inference Protocol's ModelInfer messages, built from the descriptor KServe's wheel carries
    (read by its own venv's Python), so the project's venv needs no stubs of another protobuf version."""
    code = "import sys; from kserve.protocol.grpc import grpc_predict_v2_pb2 as m; "
    code += "sys.stdout.buffer.write(m.DESCRIPTOR.serialized_pb)"
    serialized = subprocess.run([str(kserve_python), "-c", code], check=True, capture_output=True).stdout
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(serialized))
    request = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelInferRequest"))
    response = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelInferResponse"))
    return request, response


def bytes_element(raw: bytes) -> bytes:
    """The one element of a BYTES tensor in the OIP's raw form: a little-endian uint32 length, then the bytes."""
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length]


def client_factories(
    data: bytes, version: int, stylize_port: int, found: dict[str, Peer]
) -> dict[str, Callable[[], Call]]:
    def stylize() -> Call:
        client = StylizeClient(f"127.0.0.1:{stylize_port}", timeout_s=TIMEOUT_S)
        return lambda: client.stylize(data, MODEL, version=version, output_format="png").image.data

    kserve_http, kserve_grpc = found["kserve"].ports
    infer_path = f"/v2/models/{MODEL}/infer"
    request_class, response_class = oip_messages(venv("kserve") / "python")
    oip_request = request_class(
        model_name=MODEL,
        inputs=[request_class.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[struct.pack("<I", len(data)) + data],
    ).SerializeToString()

    def kserve_grpc_client() -> Call:
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        channel = grpc.insecure_channel(f"127.0.0.1:{kserve_grpc}", options=options)
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda raw: raw,  # serialised once, above
            response_deserializer=response_class.FromString,
        )
        return lambda: bytes_element(infer(oip_request, timeout=TIMEOUT_S).raw_output_contents[0])

    # KServe's REST binary extension turns BYTES inputs into UTF-8 text, which a PNG is not, so the request
    # carries it base64 in the JSON, as KServe's image examples do; the response comes in the binary extension.
    rest_body = json.dumps(
        {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()

    def oip_binary(body: bytes, response: http.client.HTTPResponse) -> bytes:
        return bytes_element(body[int(response.getheader("inference-header-content-length", "0")) :])

    def raw_body(body: bytes, response: http.client.HTTPResponse) -> bytes:
        return body

    lit_body, lit_headers = multipart("content", data)
    bento_body, bento_headers = multipart("image", data)
    json_headers = {"Content-Type": "application/json"}
    return {
        "stylize (gRPC)": stylize,
        "kserve (gRPC)": lambda: kserve_grpc_client(),
        "kserve (REST)": lambda: http_call(kserve_http, infer_path, rest_body, json_headers, oip_binary),
        "litserve (REST)": lambda: http_call(found["litserve"].ports[0], "/predict", lit_body, lit_headers, raw_body),
        "bentoml (REST)": lambda: http_call(found["bentoml"].ports[0], "/stylize", bento_body, bento_headers, raw_body),
    }


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "PNG":
            raise RuntimeError(f"a {image.format} came back, not a PNG")
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def sequential_block(call: Call, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def concurrent_block(calls: list[Call], per_client: int) -> float:
    """Images per second: one thread per client (each its own connection), `per_client` requests each."""
    errors: list[BaseException] = []
    turns = iter(calls)
    lock = threading.Lock()

    def loop() -> None:
        with lock:
            call = next(turns)
        try:
            for _ in range(per_client):
                call()
        except BaseException as exc:  # reported after the block, not lost in a thread
            errors.append(exc)

    seconds = run_concurrently(loop, len(calls))
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(calls)} clients failed: {errors[0]}")
    return len(calls) * per_client / seconds


def measure(factories: dict[str, Callable[[], Call]], rounds: int, sequential: int, per_client: int) -> dict[str, Any]:
    names = list(factories)
    single = {name: factories[name]() for name in names}
    pools = {name: [factories[name]() for _ in range(CLIENTS)] for name in names}  # kept across rounds
    outputs = {name: decode(single[name]()) for name in names}  # also the warm-up call
    reference = outputs[names[0]]
    agreement = {name: int(np.abs(outputs[name] - reference).max()) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            times[name] += sequential_block(single[name], sequential)
            rates[name].append(concurrent_block(pools[name], per_client))
            print(f"  round {round_index + 1}/{rounds} {name}: {rates[name][-1]:.2f}/s", flush=True)
    rows = []
    ours = names[0]
    ours_ms = statistics.median(times[ours]) * 1e3
    ours_rate = statistics.median(rates[ours])
    for name in names:
        round_trip = summary(times[name])
        rate = statistics.median(rates[name])
        rows.append(
            {
                "server": name,
                "round_trip_ms": round_trip["median_ms"],
                "p90_ms": round_trip["p90_ms"],
                "clients_8_per_s": round(rate, 2),
                "stylize_rt_ratio": round(ours_ms / round_trip["median_ms"], 2),
                "stylize_tput_ratio": round(ours_rate / rate, 2),
                "max_pixel_diff": agreement[name],
                "blocks_per_s": [round(r, 2) for r in rates[name]],
                "samples": round_trip["runs"],
            }
        )
    return {"rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="blocks per server, alternating (default 3)")
    parser.add_argument("--sequential", type=int, default=3, help="sequential requests per block (default 3)")
    parser.add_argument("--per-client", type=int, default=2, help="requests per client per 8-client block")
    args = parser.parse_args(argv)
    if min(args.rounds, args.sequential, args.per_client) < 1:
        parser.error("--rounds, --sequential and --per-client must be at least 1")
    logging.disable(logging.INFO)
    version, graph = newest_fast_graph()
    print(f"{MODEL} version {version}: {graph.relative_to(ROOT)}; {THREADS} ONNX Runtime threads everywhere")
    data = png(SIDE)
    load_before = os.getloadavg()
    found = peers(graph)
    stylize: Server | None = None
    try:
        # The same fp32 graph as the peers: on a CPU with VNNI the server would otherwise serve the model's
        # in-bound int8 variant, a different graph (and up to 102 levels off fp32 on this benchmark's photo).
        stylize = Server("--int8", "off")
        info = {m.name: m for m in stylize.client.list_models()}[MODEL]
        precision = dict(info.precision)
        for peer in found.values():
            peer.start()
        factories = client_factories(data, version, stylize.port, found)
        results = measure(factories, args.rounds, args.sequential, args.per_client)
    finally:
        for peer in found.values():
            peer.stop()
        if stylize is not None:
            stylize.stop()
    results.update(
        {
            "model": MODEL,
            "version": version,
            "graph": str(graph.relative_to(ROOT)),
            "stylize_precision": precision,
            "side": SIDE,
            "input_png_bytes": len(data),
            "threads": THREADS,
            "clients": CLIENTS,
            "rounds": args.rounds,
            "sequential_per_block": args.sequential,
            "requests_per_client_per_block": args.per_client,
            "triton": TRITON,
            # the machine is shared: its load (runnable processes, 1/5/15 min) before and after the run
            "load_average_before": [round(x, 1) for x in load_before],
            "load_average_after": [round(x, 1) for x in os.getloadavg()],
            "command": "python -m bench.peers " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
    )
    columns = ["server", "round_trip_ms", "p90_ms", "clients_8_per_s", "stylize_rt_ratio", "stylize_tput_ratio"]
    print(f"\n{MODEL} v{version} ({precision}), {SIDE} px PNG in and out, {THREADS} threads, medians")
    print(table(results["rows"], [*columns, "max_pixel_diff"]))
    print("triton:", TRITON)
    print("wrote", write_result("peers", results))


if __name__ == "__main__":
    main()
