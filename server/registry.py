"""The model registry: every model in the repository as warmed ONNX Runtime sessions, kept in step with it.

`refresh()` rescans the repository: a new version directory is loaded and
warmed *before* it becomes visible, a removed one stops being served, and the
swap is one assignment of an immutable mapping, so a request always holds a
complete model and none is dropped while versions change. A model or version
whose files fail to load is recorded in `failures` (health names it) and the
others still serve. The newest loaded version is served unless a request names
one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx

from core.passes import split_thin_convolutions
from core.repository import (
    FAMILY_GRAPHS,
    GraphSpec,
    ModelSpec,
    RepositoryError,
    VariantSpec,
    VersionInfo,
    list_versions,
    model_dirs,
    read_spec,
)
from server import fp16, int8
from server.errors import UnknownModel
from server.runtime import ProviderUnavailable, RuntimeOptions, Session, create_session

logger = logging.getLogger(__name__)


def fp32_graph(path: Path, options: RuntimeOptions) -> Path | bytes:
    """The fp32 graph to run for the file at `path`: on the CPU, after core/passes.py's split of thin
    convolutions where that changes it (versions exported before the pass; their quality preset's last
    layer costs 10-15% of a call unsplit), so that fp32 runs as fast as it can and an int8 variant is timed
    against that; the file itself otherwise. The same result up to float rounding."""
    if options.device != "cpu":  # the split answers the CPU kernels' blocking of output channels
        return path
    split, names = split_thin_convolutions(onnx.load(str(path)))
    if not names:
        return path
    logger.info("%s: thin convolutions %s split in two for the CPU (core/passes.py)", path.name, names)
    return split.SerializeToString()


@dataclass(frozen=True)
class LoadedVersion:
    version: int
    directory: Path
    sessions: dict[str, Session]  # graph file -> session
    provider: str
    warmup_seconds: float
    precision: dict[str, str] = field(default_factory=dict)  # graph file -> "fp32" | "fp16" | "int8"
    # graph file -> its "pixels" variant in the served precision (uint8 HWC in and out), where export wrote one
    pixel_sessions: dict[str, Session] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    versions: dict[int, LoadedVersion] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def newest(self) -> LoadedVersion:
        return self.versions[max(self.versions)]


@dataclass
class Changes:
    added: list[tuple[str, int]] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)


class ModelRegistry:
    def __init__(self, root: Path, options: RuntimeOptions, warmup_sides: Sequence[int] = (64,)) -> None:
        self.root = root
        self.options = options
        self.warmup_sides = tuple(warmup_sides)
        self._models: MappingProxyType[str, LoadedModel] = MappingProxyType({})
        self.failures: dict[str, str] = {}  # "model" or "model vN" -> why it is not served

    def load_all(self) -> Changes:
        changes = self.refresh()
        logger.info("serving %d model(s): %s", len(self._models), ", ".join(sorted(self._models)) or "none")
        return changes

    def refresh(self) -> Changes:
        """Bring the served models in step with the repository; returns what changed."""
        changes = Changes()
        current = dict(self._models)
        seen: set[str] = set()
        for model_dir in model_dirs(self.root):
            name = model_dir.name
            seen.add(name)
            try:
                spec = read_spec(model_dir)
                on_disk = list_versions(model_dir, spec.family)
                if not on_disk:
                    raise RepositoryError(f"{model_dir} has no complete version directory")
            except (RepositoryError, OSError) as exc:
                self._fail(name, str(exc))
                continue
            old = current.get(name)
            versions = {v: lv for v, lv in (old.versions.items() if old else ()) if v in on_disk}
            for version in on_disk:
                key = f"{name} v{version}"
                if version in versions or key in self.failures:
                    continue  # loaded already, or failed and not retried until the server restarts
                try:
                    versions[version] = self._load_version(spec, model_dir / str(version), version)
                except ProviderUnavailable:
                    raise  # a device problem is the whole server's, not one model's
                except Exception as exc:  # ONNX Runtime raises several types of its own
                    self._fail(key, f"{type(exc).__name__}: {exc}")
                    continue
                changes.added.append((name, version))
            changes.removed += [(name, v) for v in (old.versions if old else ()) if v not in versions]
            if versions:
                current[name] = LoadedModel(spec=spec, versions=versions)
                self.failures.pop(name, None)
            else:
                current.pop(name, None)
                if name not in self.failures:
                    self._fail(name, "none of its versions could be loaded")
        for name in set(current) - seen:  # the model's directory is gone
            changes.removed += [(name, v) for v in current.pop(name).versions]
        self._models = MappingProxyType(current)  # the swap: one assignment
        for name, version in changes.removed:
            logger.info("stopped serving %s v%d (removed from the repository)", name, version)
        return changes

    def _fail(self, key: str, reason: str) -> None:
        if self.failures.get(key) != reason:
            logger.error("model %s not served: %s", key, reason)
        self.failures[key] = reason

    def _load_version(self, spec: ModelSpec, directory: Path, version: int) -> LoadedVersion:
        sessions = {
            graph: create_session(fp32_graph(directory / graph, self.options), self.options)
            for graph in FAMILY_GRAPHS[spec.family]
        }
        started = time.perf_counter()
        for side in self.warmup_sides:
            warm_up(spec, sessions, side)
        precision = {graph.file: "fp32" for graph in spec.graphs}
        if fp16.wanted(self.options):
            for graph in spec.graphs:
                variant = self._fp16_variant(spec, graph, directory, version, sessions[graph.file])
                if variant is not None:
                    sessions[graph.file], precision[graph.file] = variant, "fp16"
        info = spec.versions.get(version, VersionInfo(sha256={}, created_at=""))
        if int8.wanted(self.options) and info.variants:
            int8.log_cpu()
            for graph in spec.graphs:
                recorded = info.variant(graph.file, "int8", "float")
                if recorded is None:
                    continue
                chosen = self._int8_variant(spec, graph, directory, version, recorded, sessions, precision)
                if chosen is not None:
                    sessions[graph.file], precision[graph.file] = chosen, "int8"
        pixel_sessions = self._pixel_sessions(spec, info, directory, precision)
        loaded = LoadedVersion(
            version=version,
            directory=directory,
            sessions=sessions,
            provider=self.options.provider,
            warmup_seconds=time.perf_counter() - started,
            precision=precision,
            pixel_sessions=pixel_sessions,
        )
        logger.info(
            "loaded %s v%d on %s in %s (warm-up at %s px: %.0f ms)",
            spec.name,
            version,
            loaded.provider,
            ", ".join(
                f"{file} {p}{' (pixels in and out)' * (file in pixel_sessions)}" for file, p in precision.items()
            ),
            "/".join(map(str, self.warmup_sides)),
            loaded.warmup_seconds * 1e3,
        )
        return loaded

    def _fp16_variant(
        self, spec: ModelSpec, graph: GraphSpec, directory: Path, version: int, fp32: Session
    ) -> Session | None:
        """Build, warm and measure the fp16 variant of one graph; the variant if it is chosen, else None.
        A variant that cannot be built or run leaves the graph in fp32: it never costs the model."""
        try:
            candidate = create_session(fp16.fp16_graph(directory / graph.file), self.options)
            for side in self.warmup_sides:
                candidate.run(None, graph_feeds(graph, side))
            check = graph_feeds(graph, min(self.warmup_sides), np.random.default_rng(0))
            timed = graph_feeds(graph, max(self.warmup_sides), np.random.default_rng(1))
            choice = fp16.choose(self.options.fp16, fp32, candidate, check, timed)
        except Exception as exc:  # the converter and ONNX Runtime raise several types of their own
            logger.warning(
                "%s v%d %s: fp32 (no fp16 variant: %s: %s)", spec.name, version, graph.file, type(exc).__name__, exc
            )
            return None
        logger.info(
            "%s v%d %s: %s (%s; fp32 %.1f ms, fp16 %.1f ms at %d px, largest difference %.2g)",
            spec.name,
            version,
            graph.file,
            choice.precision,
            choice.reason,
            choice.fp32_ms,
            choice.fp16_ms,
            max(self.warmup_sides),
            choice.max_error,
        )
        return candidate if choice.precision == "fp16" else None

    def _int8_variant(
        self,
        spec: ModelSpec,
        graph: GraphSpec,
        directory: Path,
        version: int,
        variant: VariantSpec,
        sessions: dict[str, Session],
        precision: dict[str, str],
    ) -> Session | None:
        """Warm and time a recorded int8 variant against the graph's precision so far; the session if chosen."""
        where = f"{spec.name} v{version} {graph.file}"
        if not int8.in_bound(variant):
            logger.info(
                "%s: no int8 (recorded PSNR %.1f dB, largest difference %d; the bound is %.0f dB and %d)",
                *(where, variant.psnr_db, variant.max_pixel_error, int8.MIN_PSNR_DB, int8.MAX_PIXEL_ERROR),
            )
            return None
        elsewhere = int8.recorded_error_applies(variant)
        if elsewhere:
            logger.info("%s: no int8 (%s)", where, elsewhere)
            return None
        try:
            candidate = create_session(directory / variant.file, self.options)
            for side in self.warmup_sides:
                candidate.run(None, graph_feeds(graph, side))
            timed = graph_feeds(graph, max(self.warmup_sides), np.random.default_rng(1))
            choice = int8.choose(self.options.int8, precision[graph.file], sessions[graph.file], candidate, timed)
        except Exception as exc:  # ONNX Runtime raises several types of its own
            logger.warning(
                "%s: %s (int8 variant unusable: %s: %s)", where, precision[graph.file], type(exc).__name__, exc
            )
            return None
        logger.info(
            "%s: %s (%s; %s %.1f ms, int8 %.1f ms at %d px; recorded PSNR %.1f dB, largest difference %d)",
            *(where, choice.precision, choice.reason, precision[graph.file], choice.current_ms, choice.int8_ms),
            *(max(self.warmup_sides), variant.psnr_db, variant.max_pixel_error),
        )
        return candidate if choice.precision == "int8" else None

    def _pixel_sessions(
        self, spec: ModelSpec, info: VersionInfo, directory: Path, precision: dict[str, str]
    ) -> dict[str, Session]:
        """The warmed pixels variants of the served precisions; a variant that fails leaves the float path."""
        pixel_sessions = {}
        for graph in spec.graphs:
            variant = info.variant(graph.file, precision[graph.file], "pixels")
            if variant is None:
                continue
            try:
                session = create_session(directory / variant.file, self.options)
                for side in self.warmup_sides:
                    session.run(None, int8.pixel_feeds(graph_feeds(graph, side), side))
            except Exception as exc:  # ONNX Runtime raises several types of its own
                logger.warning("%s %s: float path (%s: %s)", spec.name, variant.file, type(exc).__name__, exc)
                continue
            pixel_sessions[graph.file] = session
        return pixel_sessions

    def models(self) -> list[LoadedModel]:
        models = self._models
        return [models[name] for name in sorted(models)]

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


def warm_up(spec: ModelSpec, sessions: dict[str, Session], side: int) -> None:
    """Run each graph once at side x side so the first request does not pay for allocation and kernel choice."""
    for graph in spec.graphs:
        sessions[graph.file].run(None, graph_feeds(graph, side))


def graph_feeds(graph: GraphSpec, side: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Inputs for a graph at side x side: constant, or uniform in [0, 1) from `rng` (blend weights sum to 1)."""
    feeds = {}
    for tensor in graph.inputs:
        shape = [side if d in ("height", "width") else 1 if isinstance(d, str) else d for d in tensor.shape]
        if tensor.name == "style_weights":
            feeds[tensor.name] = np.full(shape, 1.0 / shape[-1], dtype=np.float32)
        elif tensor.name == "strength":
            feeds[tensor.name] = np.ones(shape, dtype=np.float32)
        elif rng is None:
            feeds[tensor.name] = np.full(shape, 0.5, dtype=np.float32)
        else:
            feeds[tensor.name] = rng.random(shape, dtype=np.float32)
    return feeds
