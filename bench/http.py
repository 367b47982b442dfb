"""What the HTTP front door costs beside gRPC: the same Stylize call through both, on one server.

    python -m bench.http [--rounds 30]

One server subprocess serves models/ (great_wave, the fast preset) on both ports.
Each round sends the same PNG once through each door, in alternating order:
gRPC `Stylize` (client/), `POST /v1/models/great_wave:stylize` with the raw PNG
body, and `POST /v1/stylize` with the request in proto3 JSON (base64 both ways).
At 64 px the network's time is small, so the difference is the front door's;
at 256 px it shows against a realistic call. Results: bench/results/http.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import time
from collections.abc import Callable

import httpx
from PIL import Image

from bench.common import summary, table, write_result
from bench.serving import PHOTO, Server, free_port

MODEL = "great_wave"


def png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.LANCZOS).save(buffer, "PNG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The HTTP front door against gRPC, same call, same server")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    http_port = free_port()
    server = Server("--http-port", str(http_port), "--warmup-sides", "64,256")
    rows = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=600) as http:
            for side in (64, 256):
                body = png(side)
                as_json = {"model": MODEL, "content": {"data": base64.b64encode(body).decode()}}
                doors: dict[str, Callable[[], object]] = {
                    "gRPC Stylize": lambda body=body: server.client.stylize(body, MODEL),
                    "HTTP raw body": lambda body=body: http.post(
                        f"/v1/models/{MODEL}:stylize", content=body, headers={"content-type": "image/png"}
                    ).raise_for_status(),
                    "HTTP proto3 JSON": lambda as_json=as_json: http.post(
                        "/v1/stylize", json=as_json
                    ).raise_for_status(),
                }
                times: dict[str, list[float]] = {name: [] for name in doors}
                for call in doors.values():
                    call()  # warm the connection and the path
                for round_number in range(args.rounds):
                    order = list(doors.items())
                    for name, call in order if round_number % 2 else reversed(order):
                        started = time.perf_counter()
                        call()
                        times[name].append(time.perf_counter() - started)
                grpc_median = summary(times["gRPC Stylize"])["median_ms"]
                for name, measured in times.items():
                    stats = summary(measured)
                    rows.append(
                        {"side": side, "door": name, **stats, "vs_grpc": round(stats["median_ms"] / grpc_median, 2)}
                    )
    finally:
        server.stop()
    print(table(rows, ["side", "door", "median_ms", "p90_ms", "min_ms", "runs", "vs_grpc"]))
    path = write_result("http", {"model": MODEL, "rounds": args.rounds, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
