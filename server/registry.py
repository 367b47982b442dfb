"""The model registry: every model in the repository as warmed ONNX Runtime sessions.

A model whose files fail to load is recorded in `failures` (health names it)
and the others still serve. The newest loaded version is served unless a
request names one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.errors import UnknownModel
from server.repository import FAMILY_GRAPHS, ModelSpec, RepositoryError, list_versions, model_dirs, read_spec
from server.runtime import ProviderUnavailable, RuntimeOptions, create_session

logger = logging.getLogger(__name__)

WARMUP_SIDE = 64


@dataclass
class LoadedVersion:
    version: int
    sessions: dict[str, ort.InferenceSession]  # graph file -> session
    provider: str
    warmup_seconds: float


@dataclass
class LoadedModel:
    spec: ModelSpec
    versions: dict[int, LoadedVersion] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def newest(self) -> LoadedVersion:
        return self.versions[max(self.versions)]


class ModelRegistry:
    def __init__(self, root: Path, options: RuntimeOptions) -> None:
        self.root = root
        self.options = options
        self._models: dict[str, LoadedModel] = {}
        self.failures: dict[str, str] = {}  # model name -> why it is not served

    def load_all(self) -> None:
        """Load and warm every version of every model; a broken model is skipped and recorded."""
        for model_dir in model_dirs(self.root):
            try:
                model = self._load_model(model_dir)
            except ProviderUnavailable:
                raise  # a device problem is the whole server's, not one model's
            except (RepositoryError, OSError, ort.capi.onnxruntime_pybind11_state.Fail) as exc:
                logger.error("model %s not served: %s", model_dir.name, exc)
                self.failures[model_dir.name] = str(exc)
                continue
            except Exception as exc:  # ONNX Runtime raises several of its own types
                logger.error("model %s not served: %s: %s", model_dir.name, type(exc).__name__, exc)
                self.failures[model_dir.name] = f"{type(exc).__name__}: {exc}"
                continue
            self._models[model.name] = model
        logger.info("serving %d model(s): %s", len(self._models), ", ".join(sorted(self._models)) or "none")

    def _load_model(self, model_dir: Path) -> LoadedModel:
        spec = read_spec(model_dir)
        versions = list_versions(model_dir, spec.family)
        if not versions:
            raise RepositoryError(f"{model_dir} has no complete version directory")
        model = LoadedModel(spec=spec)
        for version in versions:
            model.versions[version] = self._load_version(spec, model_dir / str(version), version)
        return model

    def _load_version(self, spec: ModelSpec, directory: Path, version: int) -> LoadedVersion:
        sessions = {graph: create_session(directory / graph, self.options) for graph in FAMILY_GRAPHS[spec.family]}
        started = time.perf_counter()
        warm_up(spec, sessions)
        loaded = LoadedVersion(
            version=version,
            sessions=sessions,
            provider=self.options.provider,
            warmup_seconds=time.perf_counter() - started,
        )
        logger.info(
            "loaded %s v%d on %s (warm-up %.0f ms)", spec.name, version, loaded.provider, loaded.warmup_seconds * 1e3
        )
        return loaded

    def models(self) -> list[LoadedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def get(self, name: str, version: int = 0) -> tuple[LoadedModel, LoadedVersion]:
        """The model and the version to serve (0: newest). Names are looked up, never used as paths."""
        model = self._models.get(name)
        if model is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise UnknownModel(f"no model named {name!r}; the loaded models are: {known}")
        if version == 0:
            return model, model.newest
        if version not in model.versions:
            raise UnknownModel(f"model {name!r} has no version {version}; loaded versions: {sorted(model.versions)}")
        return model, model.versions[version]


def warm_up(spec: ModelSpec, sessions: dict[str, ort.InferenceSession], side: int = WARMUP_SIDE) -> None:
    """Run each graph once so the first request does not pay for allocation and kernel selection."""
    for graph in spec.graphs:
        session = sessions[graph.file]
        feeds = {}
        for tensor in graph.inputs:
            shape = [side if d in ("height", "width") else 1 if isinstance(d, str) else d for d in tensor.shape]
            feeds[tensor.name] = np.full(shape, 0.5, dtype=np.float32)
        session.run(None, feeds)
