"""The HTTP/JSON API through a real server on free ports: every route, every error mapping, a flood, a client that
leaves, and the protocol label on the metrics. TLS and tokens on the HTTP port are in tests/server/test_auth.py."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from PIL import Image

from server.http.status import HTTP_STATUS
from tests.conftest import RunningServer, encode, photo, start_server, stop_server

ENV = {
    "STYLIZE_LOCAL_WORKERS": "1",
    "STYLIZE_LOSS_WEIGHTS": "random:0",  # jobs need loss weights; tests never download any
    "STYLIZE_JOB_MAX_SIDE": "256",
    "STYLIZE_JOB_MAX_ITERATIONS": "20000",
    "STYLIZE_JOB_UPDATE_INTERVAL_SECONDS": "0",
    "STYLIZE_MAX_CONCURRENT": "1",
    "STYLIZE_MAX_QUEUE": "2",
    "STYLIZE_MAX_MESSAGE_BYTES": str(4 << 20),
    "STYLIZE_GRACE_SECONDS": "3",  # what the draining test waits through
    "STYLIZE_HTTP_KEEPALIVE_SECONDS": "0.5",
}
PNG = encode(photo(96, 64))
STYLE = encode(photo(64, 64, seed=3))
BIG = encode(photo(1600, 1200, seed=1), "JPEG")  # about a second of CPU for the tiny model: holds the one slot
JOB_OPTIONS = {
    "maxSide": 48,
    "contentLayers": ["relu2_1"],
    "styleLayers": [{"layer": "relu1_1"}, {"layer": "relu2_1"}],
}


@pytest.fixture(scope="module")
def api(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(model_repo, tmp_path_factory.mktemp("http") / "server.log", env=ENV)
    yield server
    stop_server(server)


@pytest.fixture()
def http(api: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.http_url, timeout=120) as client:
        yield client


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def metric(server: RunningServer, sample: str) -> float:
    """The value of one sample, e.g. 'stylize_requests_total{code="OK",method="Stylize",protocol="http"}'."""
    text = httpx.get(server.metrics_url).text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_until(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stylize(http: httpx.Client, model: str, body: bytes = PNG, **params: Any) -> httpx.Response:
    return http.post(f"/v1/models/{model}:stylize", content=body, params=params, headers={"content-type": "image/png"})


def error(response: httpx.Response, status: int, code: str, words: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and words in body["message"], body


def sse(http: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def test_models_lists_every_family(http: httpx.Client) -> None:
    body = http.get("/v1/models").json()
    families = {model["name"]: model["family"] for model in body["models"]}
    assert families == {
        "adain": "MODEL_FAMILY_ARBITRARY",
        "tiny": "MODEL_FAMILY_PER_STYLE",
        "trio": "MODEL_FAMILY_MULTI_STYLE",
    }
    assert next(m for m in body["models"] if m["name"] == "trio")["styles"] == ["wave", "scream", "kiss"]


def test_stylize_answers_the_image_with_its_timings(http: httpx.Client) -> None:
    response = stylize(http, "tiny", strength=0.8, max_side=48)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (48, 32)
    stages = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    assert set(stages) == {"queue", "decode", "inference", "encode", "total"} and float(stages["total"]) > 0
    assert response.headers["x-stylize-model"] == "tiny/1" and response.headers["x-request-id"]
    jpeg = stylize(http, "tiny", format="jpeg", quality=80)
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"


def test_multi_style_blends_named_styles(http: httpx.Client) -> None:
    wave = stylize(http, "trio", style="wave:1")
    blend = http.post(
        "/v1/models/trio:stylize?style=wave:0.5&style=kiss:0.5", content=PNG, headers={"content-type": "image/png"}
    )
    assert wave.status_code == blend.status_code == 200 and wave.content != blend.content


def test_arbitrary_style_takes_a_form_with_style_files(http: httpx.Client) -> None:
    files = [("content", ("photo.png", PNG, "image/png")), ("style", ("a.png", STYLE, "image/png"))]
    files.append(("style", ("b.png", encode(photo(64, 64, seed=9)), "image/png")))
    response = http.post("/v1/models/adain:stylize", files=files, data={"style_weight": ["1", "3"], "strength": "0.5"})
    assert response.status_code == 200, response.text
    assert png_size(response.content) == (96, 64)


def test_proto3_json_gives_the_grpc_shapes(http: httpx.Client) -> None:
    request = {"model": "tiny", "content": {"data": base64.b64encode(PNG).decode()}, "maxSide": 48}
    body = http.post("/v1/stylize", json=request).json()
    assert body["model"] == "tiny" and body["width"] == 48 and body["height"] == 32
    assert set(body["timings"]) >= {"queueSeconds", "inferenceSeconds", "totalSeconds"}
    image = base64.b64decode(body["image"]["data"])
    assert image == stylize(http, "tiny", max_side=48).content


@pytest.mark.parametrize(
    ("path", "params", "words"),
    [
        ("tiny", {"strength": 2}, "strength must be between 0 and 1"),
        ("tiny", {"strength": "lots"}, "strength must be a number"),
        ("tiny", {"max_side": -1}, "max_side must be a whole number"),
        ("tiny", {"format": "gif"}, "format must be png or jpeg"),
        ("tiny", {"colour": 1}, "unknown option colour"),
        ("trio", {"style": "wave"}, "style must be NAME:WEIGHT"),
        ("trio", {"style": "nope:1"}, "has no style 'nope'"),
        ("adain", {}, "send at least one style image"),
    ],
)
def test_bad_options_are_400_with_the_grpc_message(
    http: httpx.Client, path: str, params: dict[str, Any], words: str
) -> None:
    error(stylize(http, path, **params), 400, "INVALID_ARGUMENT", words)


def test_bad_bodies_are_400_and_unknown_things_404(http: httpx.Client) -> None:
    error(stylize(http, "tiny", body=b"not an image"), 400, "INVALID_ARGUMENT", "content image")
    text = http.post("/v1/models/tiny:stylize", content=PNG, headers={"content-type": "text/plain"})
    error(text, 400, "INVALID_ARGUMENT", "is not an image")
    error(http.post("/v1/stylize", content=b"{"), 400, "INVALID_ARGUMENT", "not a StylizeRequest in proto3 JSON")
    error(http.post("/v1/stylize", json={"model": "tiny", "bogus": 1}), 400, "INVALID_ARGUMENT", "bogus")
    error(stylize(http, "nope"), 404, "NOT_FOUND", "no model named 'nope'")
    error(http.get("/v1/jobs/nope"), 404, "NOT_FOUND")
    error(http.get("/v1/jobs/nope/events"), 404, "NOT_FOUND")
    error(http.delete("/v1/jobs/nope"), 404, "NOT_FOUND")
    error(http.get("/v1/nothing"), 404, "NOT_FOUND", "no route GET /v1/nothing")


def test_a_body_over_the_limit_is_413(http: httpx.Client) -> None:
    huge = b"\0" * (5 << 20)
    error(stylize(http, "tiny", body=huge), 413, "RESOURCE_EXHAUSTED", "STYLIZE_MAX_MESSAGE_BYTES")

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as the body passes the limit
        for _ in range(5):
            yield huge[: 1 << 20]

    chunked = http.post("/v1/models/tiny:stylize", content=chunks(), headers={"content-type": "image/png"})
    error(chunked, 413, "RESOURCE_EXHAUSTED", "STYLIZE_MAX_MESSAGE_BYTES")
    assert stylize(http, "tiny").status_code == 200


def test_the_status_mapping_is_the_standard_one() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    expected = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404}
    expected |= {"RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
    assert {code.name: HTTP_STATUS[code] for code in grpc.StatusCode if code.name in expected} == expected


def hold_the_slot(api: RunningServer) -> threading.Thread:
    """A large image in the only inference slot, in a thread; returns once it holds the slot."""
    admitted = "stylize_queue_wait_seconds_count"  # observed as a call takes its slot
    before = metric(api, admitted)
    thread = threading.Thread(
        target=lambda: httpx.post(
            f"{api.http_url}/v1/models/tiny:stylize", content=BIG, headers={"content-type": "image/jpeg"}, timeout=300
        )
    )
    thread.start()
    wait_until(lambda: metric(api, admitted) > before)
    return thread


def test_a_flood_is_answered_429_and_the_server_keeps_serving(http: httpx.Client, api: RunningServer) -> None:
    def call(_: int) -> httpx.Response:
        return stylize(http, "tiny", body=BIG)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, range(12)))
    statuses = sorted(response.status_code for response in answers)
    assert set(statuses) == {200, 429}, statuses  # 1 running and 2 queued are served, the rest refused at once
    refused = next(response for response in answers if response.status_code == 429)
    error(refused, 429, "RESOURCE_EXHAUSTED", "STYLIZE_MAX_QUEUE")
    assert stylize(http, "tiny").status_code == 200


def test_a_deadline_that_passes_in_the_queue_is_504(http: httpx.Client, api: RunningServer) -> None:
    holder = hold_the_slot(api)
    late = http.post(
        # 50 ms: inside the hold on a fast CPU too (at 0.2 s the hold once ended first on an AVX-512 Xeon)
        "/v1/models/tiny:stylize",
        content=PNG,
        headers={"content-type": "image/png", "x-timeout-seconds": "0.05"},
    )
    error(late, 504, "DEADLINE_EXCEEDED", "deadline passed")
    untimed = http.post(
        "/v1/models/tiny:stylize", content=PNG, headers={"content-type": "image/png", "x-timeout-seconds": "soon"}
    )
    error(untimed, 400, "INVALID_ARGUMENT", "x-timeout-seconds")
    holder.join()


def test_a_client_that_goes_away_is_counted_499_cancelled(api: RunningServer) -> None:
    cancelled = 'stylize_requests_total{code="CANCELLED",method="Stylize",protocol="http"}'
    admitted = "stylize_queue_wait_seconds_count"
    before, admitted_before = metric(api, cancelled), metric(api, admitted)
    host, port = api.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:  # sends a large image, leaves while it runs
        head = "POST /v1/models/tiny:stylize HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        sock.sendall(f"{head}Content-Length: {len(BIG)}\r\n\r\n".encode() + BIG)
        wait_until(lambda: metric(api, admitted) > admitted_before)
    wait_until(lambda: metric(api, cancelled) > before)


def submit(http: httpx.Client, iterations: int, **options: Any) -> dict[str, Any]:
    files = [("content", ("c.png", encode(photo(48, 32)), "image/png")), ("style", ("s.png", STYLE, "image/png"))]
    fields = {"options": json.dumps({**JOB_OPTIONS, "iterations": iterations, **options})}
    response = http.post("/v1/jobs", files=files, data=fields)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    return dict(response.json())


def test_a_job_streams_its_updates_then_its_result(http: httpx.Client) -> None:
    job = submit(http, 8, previewEvery=2)
    assert job["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING") and job["iterations"] == 8
    error(http.get(f"/v1/jobs/{job['id']}/result"), 400, "FAILED_PRECONDITION", "once it has SUCCEEDED")
    events = sse(http, job["id"])
    assert {name for name, _ in events} == {"job"}
    updates = [body for _, body in events]
    assert updates[-1]["state"] == "JOB_STATE_SUCCEEDED" and updates[-1]["resultUrl"] == f"/v1/jobs/{job['id']}/result"
    iterations = [u["iteration"] for u in updates]
    assert iterations == sorted(iterations) and iterations[-1] == 8
    assert all("preview" not in u and "result" not in u for u in updates)  # URLs, not inline images
    previews = [u["previewUrl"] for u in updates if "previewUrl" in u]
    assert previews and all(url.startswith(f"/v1/jobs/{job['id']}/preview?iteration=") for url in previews)
    assert png_size(http.get(previews[-1]).content) == (48, 32)
    result = http.get(updates[-1]["resultUrl"])
    assert result.headers["content-type"] == "image/png" and png_size(result.content) == (48, 32)
    assert http.get(f"/v1/jobs/{job['id']}").json()["state"] == "JOB_STATE_SUCCEEDED"


def long_json_job() -> dict[str, Any]:
    """A whole OptimizationRequest in proto3 JSON that runs until cancelled (20,000 iterations)."""
    return {
        "content": {"data": base64.b64encode(encode(photo(48, 32))).decode()},
        "styleImages": [{"data": base64.b64encode(STYLE).decode()}],
        "iterations": 20000,
        **JOB_OPTIONS,
    }


def test_a_job_from_proto3_json_and_its_cancel(http: httpx.Client) -> None:
    request = long_json_job()
    job = http.post("/v1/jobs", json=request).json()
    wait_until(lambda: http.get(f"/v1/jobs/{job['id']}").json()["iteration"] > 0)
    cancelled = http.delete(f"/v1/jobs/{job['id']}").json()
    assert cancelled["state"] == "JOB_STATE_CANCELLED"
    assert sse(http, job["id"])[-1][1]["state"] == "JOB_STATE_CANCELLED"
    error(http.get(f"/v1/jobs/{job['id']}/result"), 400, "FAILED_PRECONDITION", "CANCELLED")


@pytest.mark.parametrize(
    ("files", "options", "words"),
    [
        ([], {}, "no `content` file"),
        ([("content", ("c.png", PNG, "image/png"))], {}, "style_images is empty"),
        (
            [("content", ("c.png", PNG, "image/png")), ("style", ("s.png", STYLE, "image/png"))],
            {"iterations": 9e9},
            "not a OptimizationRequest",
        ),
        (
            [("content", ("c.png", PNG, "image/png")), ("style", ("s.png", STYLE, "image/png"))],
            {"maxSide": 999},
            "STYLIZE_JOB_MAX_SIDE",
        ),
        ([("painting", ("c.png", PNG, "image/png"))], {}, "unexpected file field painting"),
    ],
)
def test_bad_jobs_are_400(http: httpx.Client, files: list[Any], options: dict[str, Any], words: str) -> None:
    error(http.post("/v1/jobs", files=files, data={"options": json.dumps(options)}), 400, "INVALID_ARGUMENT", words)


def test_health_readiness_openapi_and_the_page(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "alive"}
    assert http.get("/readyz").json() == {"status": "SERVING"}
    paths = set(http.get("/openapi.json").json()["paths"])
    assert paths >= {
        "/v1/models",
        "/v1/models/{model}:stylize",
        "/v1/stylize",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/result",
        "/healthz",
        "/readyz",
    }
    page = http.get("/")
    assert page.status_code == 200 and "<title>Stylize</title>" in page.text
    assert http.get("/static/app.js").status_code == 200


def test_metrics_carry_the_protocol(http: httpx.Client, api: RunningServer) -> None:
    assert stylize(http, "tiny").status_code == 200
    assert metric(api, 'stylize_requests_total{code="OK",method="Stylize",protocol="http"}') >= 1
    assert metric(api, 'stylize_requests_total{code="NOT_FOUND",method="Stylize",protocol="http"}') >= 1


def test_a_quiet_event_stream_gets_keep_alive_comments(http: httpx.Client) -> None:
    """A job queued behind another sends no update for minutes; comment lines keep proxies from closing it."""
    request = long_json_job()
    running = http.post("/v1/jobs", json=request).json()
    queued = http.post("/v1/jobs", json=request).json()  # one local worker: this one waits
    try:
        lines = []
        with http.stream("GET", f"/v1/jobs/{queued['id']}/events") as response:
            for line in response.iter_lines():
                lines.append(line)
                if line == ": keep-alive":
                    break
        assert lines[0] == "event: job" and json.loads(lines[1][6:])["state"] == "JOB_STATE_QUEUED"
        assert lines[-1] == ": keep-alive"
    finally:
        for job in (queued, running):
            http.delete(f"/v1/jobs/{job['id']}")
    assert sse(http, queued["id"])[-1][1]["state"] == "JOB_STATE_CANCELLED"


def test_last_draining_is_503_and_readyz_says_so(http: httpx.Client, api: RunningServer) -> None:
    """Stops the module's server, so it runs last: while a running job gets its grace period, the HTTP port
    still answers, readyz 503 and new calls 503 UNAVAILABLE."""
    job = submit(http, 20000)
    wait_until(lambda: http.get(f"/v1/jobs/{job['id']}").json()["iteration"] > 0)
    api.process.terminate()
    wait_until(lambda: http.get("/readyz").status_code == 503)
    error(http.get("/readyz"), 503, "UNAVAILABLE", "not ready")
    error(http.get("/v1/models"), 503, "UNAVAILABLE", "shutting down")
    assert api.process.wait(timeout=60) == 0
