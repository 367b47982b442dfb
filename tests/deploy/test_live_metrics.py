"""The live server's metrics: valid exposition, every dashboard query's metric really exported, and a real
Prometheus server scraping it and answering a latency quantile.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import StylizeClient
from stylize.v1 import stylize_pb2 as pb
from tests.conftest import ROOT, RunningServer, encode, free_port, photo, start_server, stop_server

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None or shutil.which("prometheus") is None,
    reason="promtool and prometheus missing: run `make system-deps`",
)


def scrape(server: RunningServer) -> str:
    return urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()


def exercise(server: RunningServer) -> None:
    """A few calls on every path: each family, an error, and one Gatys job to its end."""
    with StylizeClient(server.target, timeout_s=120) as client:
        content = encode(photo(48, 40))
        client.stylize(content, "tiny")
        client.stylize(content, "trio", styles={"wave": 0.5, "kiss": 0.5})
        client.stylize(content, "adain", style_images=[encode(photo(40, 40, seed=2))])
        client.stylize(content, "adain", style_images=[encode(photo(40, 40, seed=2))])
        try:
            client.stylize(b"nope", "tiny")
        except Exception:  # the INVALID_ARGUMENT we want counted
            pass
        job = client.submit_optimization(
            pb.OptimizationRequest(
                content=pb.Image(data=content),
                style_images=[pb.Image(data=encode(photo(40, 40, seed=3)))],
                max_side=32,
                iterations=3,
                content_layers=["relu2_1"],
                style_layers=[pb.LayerWeight(layer="relu1_1", weight=1), pb.LayerWeight(layer="relu2_1", weight=1)],
            )
        )
        final = list(client.watch_job(job.id, timeout_s=300))[-1]
        assert final.state == pb.JOB_STATE_SUCCEEDED, final.error


@pytest.fixture(scope="module")
def live(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"STYLIZE_LOCAL_WORKERS": "1", "STYLIZE_LOSS_WEIGHTS": "random:0", "STYLIZE_WARMUP_SIDES": "64"}
    server = start_server(model_repo, tmp_path_factory.mktemp("live") / "server.log", env=env)
    exercise(server)
    yield server
    stop_server(server)


def test_exposition_passes_promtool(live: RunningServer, tmp_path: Path) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape(live), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names.add(name + "_total")
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_dashboard_metric_is_exported(live: RunningServer) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "stylize.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"] for v in dashboard["templating"]["list"]]
    used = {name for query in queries for name in re.findall(r"\bstylize_[a-z0-9_]+", query)}
    assert len(used) >= 20
    missing = used - exported_names(scrape(live))
    assert not missing, f"the dashboard queries metrics the server does not export: {sorted(missing)}"


def test_alert_rules_use_exported_metrics(live: RunningServer) -> None:
    rules = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r"\bstylize_[a-z0-9_]+", rules))
    assert not used - exported_names(scrape(live))


def query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_a_real_prometheus_scrapes_and_answers_a_latency_quantile(live: RunningServer, tmp_path: Path) -> None:
    port = free_port()
    target = live.metrics_url.split("//")[1].split("/")[0]
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: stylize-api\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if [r["value"][1] for r in query(port, 'up{job="stylize-api"}')] == ["1"]:  # type: ignore[index]
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped the server"
            time.sleep(0.5)
        quantile = (
            "histogram_quantile(0.95, sum by (le) "
            '(rate(stylize_request_duration_seconds_bucket{method="Stylize"}[30s])))'
        )
        with StylizeClient(live.target, timeout_s=60) as client:
            deadline = time.monotonic() + 60
            while True:
                client.stylize(encode(photo(48, 40)), "tiny")
                result = query(port, quantile)
                if result and result[0]["value"][1] not in ("NaN", "+Inf"):  # type: ignore[index]
                    break
                assert time.monotonic() < deadline, f"no quantile: {result}"
                time.sleep(1.0)
        seconds = float(result[0]["value"][1])  # type: ignore[index]
        assert 0 < seconds < 60
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
