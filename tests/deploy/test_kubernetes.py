"""deploy/kubernetes rendered as `kubectl apply -k` would, every object checked against its schema, and the
properties operators rely on.

Rendering: kubectl v1.35.2's `kubectl kustomize` (kustomize v5.7.1), fetched by `make .cache/tools/kubectl`
(a prerequisite of `make test`). Schemas: Kubernetes' own OpenAPI schemas as the `kubernetes-validate` package
ships them, strict (an unknown field is an error), for the oldest and newest release checked; the KEDA
ScaledObject through `cloudcoil-models-keda`, models generated from KEDA 2.16.1's CRDs, also strict (the
object must survive the models unchanged).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.config import ServerConfig, WorkerConfig, env_name
from server.jobs.queue import QUEUE_NAME
from tests.conftest import ROOT

KUBECTL = ROOT / ".cache" / "tools" / "kubectl"
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.name for path in (KUBERNETES / "overlays").iterdir())
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())  # native gRPC probes and preStop sleep: 1.30 on
DEFAULTS = ServerConfig()


def render(overlay: str) -> list[dict[str, Any]]:
    assert KUBECTL.exists(), f"no {KUBECTL}: run `make -o .venv/.installed .cache/tools/kubectl`"
    done = subprocess.run([KUBECTL, "kustomize", KUBERNETES / "overlays" / overlay], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], dict[str, Any]]]:
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in render(request.param)}
    return request.param, objects


def one(objects: dict[tuple[str, str], dict[str, Any]], kind: str, prefix: str = "") -> dict[str, Any]:
    (found,) = [doc for (k, name), doc in objects.items() if k == kind and name.startswith(prefix)]
    return found


def pod_spec(objects: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return objects[(kind, name)]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_every_object_follows_its_schema(rendered: tuple[str, dict[tuple[str, str], dict[str, Any]]]) -> None:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    _, objects = rendered
    for (kind, name), doc in objects.items():
        if kind == "ScaledObject":
            again = ScaledObject.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
            assert again == doc, f"ScaledObject {name}: fields KEDA's schema does not have"
            continue
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_api_probes_grace_and_load_balancing(rendered: tuple[str, dict[tuple[str, str], dict[str, Any]]]) -> None:
    overlay, objects = rendered
    spec = pod_spec(objects, "Deployment", "stylize-api")
    (api,) = spec["containers"]
    if "tls" not in overlay:  # the kubelet's own gRPC probes on grpc.health.v1
        assert api["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}
        assert api["livenessProbe"]["grpc"]["service"] != "", "liveness asks apart from readiness"
        assert "service" not in api["startupProbe"]["grpc"]
    else:  # TLS: the kubelet's gRPC probe cannot speak it, so the image's client asks over TLS
        assert api["readinessProbe"]["exec"]["command"][:3] == ["python", "-m", "client"]
    startup = api["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "warm-up takes minutes on a GPU"
    config = one(objects, "ConfigMap", "stylize-config")["data"]
    drain = float(config["STYLIZE_GRACE_SECONDS"]) + api["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > drain
    grpc_service = objects[("Service", "stylize-api")]["spec"]
    assert grpc_service["clusterIP"] == "None", "headless, so clients round-robin over every replica"
    ports = {port["name"]: port["port"] for port in grpc_service["ports"]}
    assert ports == {"grpc": DEFAULTS.port, "http": 8080, "metrics": DEFAULTS.metrics_port}
    labels = objects[("Deployment", "stylize-api")]["spec"]["selector"]["matchLabels"]
    assert objects[("PodDisruptionBudget", "stylize-api")]["spec"]["selector"]["matchLabels"] == labels
    assert objects[("HorizontalPodAutoscaler", "stylize-api")]["spec"]["scaleTargetRef"]["name"] == "stylize-api"
    tokens = {v["name"]: v for v in spec["volumes"]}["tokens"]["secret"]["secretName"]
    assert tokens == "stylize-tokens" and config["STYLIZE_TOKENS_FILE"].startswith("/etc/stylize/tokens/")


def test_gpus_only_in_the_gpu_overlays(rendered: tuple[str, dict[tuple[str, str], dict[str, Any]]]) -> None:
    overlay, objects = rendered
    device = one(objects, "ConfigMap", "stylize-config")["data"]["STYLIZE_DEVICE"]
    for name in ("stylize-api", "stylize-worker"):
        (container,) = pod_spec(objects, "Deployment", name)["containers"]
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpus, device) == ((1, "cuda") if overlay.startswith("gpu") else (None, "cpu")), name


def test_workers_scale_on_the_queue_with_their_default_weights_in_the_image_and_others_from_a_volume(
    rendered: tuple[str, dict[tuple[str, str], dict[str, Any]]],
) -> None:
    _, objects = rendered
    scaled = objects[("ScaledObject", "stylize-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "stylize-worker" and scaled["minReplicaCount"] == 0
    (trigger,) = scaled["triggers"]
    namespace = objects[("Namespace", "stylize")]["metadata"]["name"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == QUEUE_NAME
    assert trigger["metadata"]["address"] == f"stylize-redis.{namespace}.svc.cluster.local:6379"
    assert scaled["cooldownPeriod"] > DEFAULTS.job_time_budget_seconds, "a job outlives the queue's last message"
    spec = pod_spec(objects, "Deployment", "stylize-worker")
    (worker,) = spec["containers"]
    assert "TORCH_HOME" not in {e["name"] for e in worker["env"]}, "the image's own TORCH_HOME holds keras-vgg16"
    mount = {m["mountPath"]: m for m in worker["volumeMounts"]}["/weights"]
    assert mount["readOnly"] and {v["name"]: v for v in spec["volumes"]}[mount["name"]]["persistentVolumeClaim"]


def test_redis_keeps_an_append_only_file_and_only_the_service_reaches_it(
    rendered: tuple[str, dict[tuple[str, str], dict[str, Any]]],
) -> None:
    _, objects = rendered
    redis = objects[("StatefulSet", "stylize-redis")]["spec"]
    (container,) = redis["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    (claim,) = redis["volumeClaimTemplates"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[claim["metadata"]["name"]] == "/data"
    config = one(objects, "ConfigMap", "stylize-config")["data"]
    assert config["STYLIZE_QUEUE"].startswith("redis://stylize-redis:6379/")
    policy = objects[("NetworkPolicy", "stylize-redis")]["spec"]
    assert policy["podSelector"]["matchLabels"] == redis["selector"]["matchLabels"]
    (rule,) = policy["ingress"]
    allowed = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]}
    assert allowed == {"stylize-api", "stylize-worker", "keda-operator"}


def test_pods_are_restricted_scraped_and_configured_with_real_settings(
    rendered: tuple[str, dict[tuple[str, str], dict[str, Any]]],
) -> None:
    _, objects = rendered
    # One ConfigMap for the API and the workers: each process reads its own settings from it.
    known = {env_name(f.name) for config in (ServerConfig, WorkerConfig) for f in dataclasses.fields(config)}
    config = one(objects, "ConfigMap", "stylize-config")["data"]
    assert not set(config) - known, f"not settings of server/config.py: {set(config) - known}"
    metrics_ports = {"stylize-api": DEFAULTS.metrics_port, "stylize-worker": int(config["STYLIZE_WORKER_METRICS_PORT"])}
    for (kind, name), doc in objects.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        template = doc["spec"]["template"]
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True, name
        for container in template["spec"]["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert ":" in container["image"] and not container["image"].endswith(":latest"), container["image"]
        if name in metrics_ports:
            annotations = template["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) == metrics_ports[name]


def test_the_dashboard_config_map_is_the_dashboard_file(
    rendered: tuple[str, dict[tuple[str, str], dict[str, Any]]],
) -> None:
    _, objects = rendered
    dashboard = objects[("ConfigMap", "stylize-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = ROOT / "deploy" / "grafana" / "dashboards" / "stylize.json"
    assert json.loads(dashboard["data"]["stylize.json"]) == json.loads(source.read_text())
    assert dashboard["data"]["stylize.json"] == source.read_text()


def test_the_overlays_are_the_ones_the_readme_names() -> None:
    readme = (ROOT / "README.md").read_text()
    for overlay in OVERLAYS:
        assert f"deploy/kubernetes/overlays/{overlay}" in readme
    assert Path(KUBERNETES / "base" / "kustomization.yaml").exists()
