"""The README documents what the project really has."""

from __future__ import annotations

import dataclasses

from server.config import ServerConfig, WorkerConfig, env_name
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_quick_start_is_the_two_commands() -> None:
    assert "make serve" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    settings = {f.name for kind in (ServerConfig, WorkerConfig) for f in dataclasses.fields(kind)}
    missing = [env_name(name) for name in sorted(settings) if f"`{env_name(name)}`" not in README]
    assert not missing, f"README's configuration table lacks {missing}"
