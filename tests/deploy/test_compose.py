"""docker-compose.yml against the Compose specification, and what operators rely on in it.

tests/deploy/compose-spec.json is compose-spec/compose-spec's schema/compose-spec.json (see data/SOURCES.md).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from server.config import ServerConfig, WorkerConfig, env_name
from tests.conftest import ROOT

SCHEMA = json.loads((Path(__file__).parent / "compose-spec.json").read_text())


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's `!reset` tag (an override file's way to drop a key)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: {"__reset__": True})


def load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 - a SafeLoader subclass


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge for what the override uses: mappings merge, `!reset` removes."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and value.get("__reset__"):
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(ROOT / "docker-compose.yml")


def test_compose_file_and_cpu_variant_follow_the_specification(compose: dict[str, Any]) -> None:
    jsonschema.validate(compose, SCHEMA)
    cpu = merge(compose, load(ROOT / "deploy" / "compose.cpu.yml"))
    jsonschema.validate(cpu, SCHEMA)
    assert "deploy" not in cpu["services"]["api"] and "deploy" not in cpu["services"]["worker"]
    assert cpu["services"]["api"]["environment"]["STYLIZE_DEVICE"] == "cpu"


def test_services_gpus_and_scaling(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "worker", "redis", "prometheus", "grafana"} <= set(services)
    for name in ("api", "worker"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
    worker = services["worker"]
    assert "ports" not in worker and "container_name" not in worker, "scaled replicas would collide"


def test_api_health_dependencies_grace_and_models(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["healthcheck"]["test"][-1] == "health", "the gRPC health protocol via the client"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert compose["services"]["prometheus"]["depends_on"]["api"]["condition"] == "service_healthy"
    grace = float(api["environment"]["STYLIZE_GRACE_SECONDS"])
    assert int(re.fullmatch(r"(\d+)s", api["stop_grace_period"]).group(1)) > grace  # type: ignore[union-attr]
    assert "./models:/models:ro" in api["volumes"] and api["environment"]["STYLIZE_MODELS"] == "/models"


def test_environment_names_are_real_settings(compose: dict[str, Any]) -> None:
    for name, kind in (("api", ServerConfig), ("worker", WorkerConfig)):
        known = {env_name(f.name) for f in dataclasses.fields(kind)}
        for variable in compose["services"][name]["environment"]:
            if variable.startswith("STYLIZE_"):
                assert variable in known, f"{name}: {variable} is not a setting of server/config.py's {kind.__name__}"


def test_grafana_is_provisioned_with_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "stylize.json").read_text())
    assert dashboard["uid"] == "stylize-overview"
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel}
    assert uids == {datasource["datasources"][0]["uid"]}
