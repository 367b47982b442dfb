"""The model repository: its layout and `model.json` schema, with its one reader and its one writer.

    models/
      starry_night/
        model.json        # ModelSpec: family, styles, preset, graphs and their inputs, provenance per version
        1/model.onnx
        2/model.onnx      # the newest version is served unless a request names one
        2/model.pixels.onnx       # variants (VariantSpec, written by export/variants.py): uint8 pixels in and out,
        2/model.int8.onnx         # int8 weights and activations, both; the server chooses among them at load
        2/model.int8.pixels.onnx

A version is a directory named by a positive integer that holds every graph the
family needs. `write_version` (called by export/) writes a version into a hidden
temporary directory and renames it into place, so a reader (the server's
registry) never sees half a version. Both sides use the dataclasses below, so
the schema is written down once.

Torch-free: the API process imports this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.files import sha256_file

logger = logging.getLogger(__name__)

SPEC_FILE = "model.json"
FAMILIES = ("per_style", "multi_style", "arbitrary")
# The graphs each family's version directory must hold.
FAMILY_GRAPHS = {
    "per_style": ("model.onnx",),
    "multi_style": ("model.onnx",),
    "arbitrary": ("model.onnx", "style_encoder.onnx"),
}
FAMILY_GRAPHS_ALL = frozenset(g for graphs in FAMILY_GRAPHS.values() for g in graphs)
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


class RepositoryError(ValueError):
    """A model directory or its model.json is malformed; the message names the file."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | str]  # ints are fixed, strings name dynamic axes
    dtype: str = "float32"
    description: str = ""


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


# The tensors of a "pixels" variant: what the server decoded, as it is, and what it encodes.
PIXELS_INPUT = TensorSpec("pixels", ["batch", "height", "width", 3], "uint8", "RGB bytes, row by row (HWC)")
PIXELS_OUTPUT = TensorSpec("stylized_pixels", ["batch", "height", "width", 3], "uint8", "RGB bytes (HWC)")
VARIANT_PRECISIONS = ("fp32", "int8")
PSNR_IDENTICAL = 99.0
# The stated bound on a variant's error against fp32 on held photos (bytes, 0-255), which export aims at
# (export/variants.py) and the server enforces (server/int8.py). 30 dB is a mean error of about 8 levels;
# the largest errors sit on a few edge pixels where activations leave the calibrated range.
VARIANT_MIN_PSNR_DB = 30.0
VARIANT_MAX_PIXEL_ERROR = 96


def within_variant_bound(psnr_db: float, max_pixel_error: int) -> bool:
    return psnr_db >= VARIANT_MIN_PSNR_DB and max_pixel_error <= VARIANT_MAX_PIXEL_ERROR


VARIANT_IO = ("float", "pixels")


@dataclass(frozen=True)
class VariantSpec:
    """Another build of one of a version's graphs: the same network in another precision or with other I/O.

    io "float" takes and returns what the graph does; "pixels" takes PIXELS_INPUT for the graph's image and
    returns PIXELS_OUTPUT, with the layout change, scaling and rounding inside. The errors are against the
    fp32 graph's output rounded to bytes, on photos the calibration did not see (export/variants.py).
    """

    file: str  # "model.int8.pixels.onnx"
    graph: str  # the graph it stands in for: "model.onnx"
    precision: str  # VARIANT_PRECISIONS
    io: str  # VARIANT_IO
    sha256: str
    psnr_db: float  # PSNR_IDENTICAL where every pixel matched (JSON has no infinity)
    max_pixel_error: int  # 0-255
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionInfo:
    sha256: dict[str, str]  # graph file -> SHA-256 of its bytes
    created_at: str  # ISO 8601, UTC
    provenance: dict[str, Any] = field(default_factory=dict)
    variants: list[VariantSpec] = field(default_factory=list)  # none in versions exported before issue 18

    def variant(self, graph: str, precision: str, io: str) -> VariantSpec | None:
        return next((v for v in self.variants if (v.graph, v.precision, v.io) == (graph, precision, io)), None)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    styles: list[str]
    graphs: list[GraphSpec]
    preset: str = ""
    description: str = ""
    versions: dict[int, VersionInfo] = field(default_factory=dict)

    def loss_weights(self, version: int) -> str:
        info = self.versions.get(version)
        return str(info.provenance.get("loss_weights", "")) if info else ""

    def to_json(self) -> str:
        data = asdict(self)
        data["versions"] = {str(k): v for k, v in sorted(data["versions"].items())}
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = SPEC_FILE) -> ModelSpec:
        try:
            graphs = [
                GraphSpec(
                    file=g["file"],
                    inputs=[TensorSpec(**t) for t in g["inputs"]],
                    outputs=[TensorSpec(**t) for t in g["outputs"]],
                )
                for g in data["graphs"]
            ]
            versions = {int(k): _version_info(v) for k, v in data.get("versions", {}).items()}
            spec = cls(
                name=data["name"],
                family=data["family"],
                styles=list(data["styles"]),
                graphs=graphs,
                preset=data.get("preset", ""),
                description=data.get("description", ""),
                versions=versions,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RepositoryError(f"{source}: malformed model spec ({exc!r})") from None
        if spec.family not in FAMILIES:
            raise RepositoryError(f"{source}: family {spec.family!r} is not one of {FAMILIES}")
        return spec


def _version_info(data: dict[str, Any]) -> VersionInfo:
    variants = [VariantSpec(**v) for v in data.get("variants", [])]
    for variant in variants:
        if variant.precision not in VARIANT_PRECISIONS or variant.io not in VARIANT_IO:
            raise ValueError(f"variant {variant.file}: precision {variant.precision!r}, io {variant.io!r}")
    return VersionInfo(**{**data, "variants": variants})


def read_spec(model_dir: Path) -> ModelSpec:
    path = model_dir / SPEC_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RepositoryError(f"{path} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path} cannot be read: {exc}") from None
    spec = ModelSpec.from_dict(data, source=str(path))
    if spec.name != model_dir.name:
        raise RepositoryError(f"{path} names the model {spec.name!r}, but its directory is {model_dir.name!r}")
    return spec


def list_versions(model_dir: Path, family: str) -> list[int]:
    """Complete version directories, ascending: a positive integer name and every graph present."""
    versions = []
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
            if all((child / graph).is_file() for graph in FAMILY_GRAPHS[family]):
                versions.append(int(child.name))
    return sorted(versions)


def model_dirs(root: Path) -> list[Path]:
    """Model directories under the repository root (those holding a model.json), by name."""
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a directory")
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / SPEC_FILE).exists())


def version_dir(root: Path, name: str, version: int) -> Path:
    return root / name / str(version)


# The writer (export/).


def graph_interface(graphs: Sequence[GraphSpec]) -> list[tuple[str, list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """What clients rely on: each graph's file and its tensors' names, shapes and types (not their descriptions)."""
    return [
        (g.file, [(t.name, t.shape, t.dtype) for t in g.inputs], [(t.name, t.shape, t.dtype) for t in g.outputs])
        for g in graphs
    ]


def write_version(
    root: Path,
    spec: ModelSpec,
    graph_files: dict[str, Path],
    provenance: dict[str, Any],
    version: int | None = None,
    variants: Sequence[tuple[VariantSpec, Path]] = (),
) -> int:
    """Copy `graph_files` (graph name -> built file) into root/<name>/<version>/ and record it in model.json.

    `spec` carries the model's family, styles, preset and graph specs; its
    `versions` are ignored and read from the repository. A new version of an
    existing model must keep its family, styles and graph inputs, since clients
    rely on them; a different network needs a new name. Returns the version.
    """
    if not NAME_PATTERN.match(spec.name):
        raise RepositoryError(f"model name {spec.name!r} must match {NAME_PATTERN.pattern}")
    model_dir = root / spec.name
    model_dir.mkdir(parents=True, exist_ok=True)
    existing: dict[int, VersionInfo] = {}
    if (model_dir / SPEC_FILE).exists():
        current = read_spec(model_dir)
        for name, kept in (
            ("family", lambda m: m.family),
            ("styles", lambda m: m.styles),
            ("graphs", lambda m: graph_interface(m.graphs)),  # descriptions may change; tensors may not
        ):
            if kept(current) != kept(spec):
                raise RepositoryError(
                    f"{model_dir}: a new version must keep the model's {name} "
                    f"({kept(current)!r}); export under a new --name instead"
                )
        existing = dict(current.versions)
    on_disk = list_versions(model_dir, spec.family)
    if version is None:
        version = max([0, *on_disk, *existing]) + 1
    if version in on_disk:
        raise RepositoryError(f"{model_dir / str(version)} already exists; versions are immutable")

    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        hashes = {}
        for graph_name, built in graph_files.items():
            shutil.copyfile(built, staging / graph_name)
            hashes[graph_name] = sha256_file(staging / graph_name)
        info = VersionInfo(
            sha256=hashes,
            created_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
            provenance=provenance,
            variants=_copy_variants(variants, staging),
        )
        updated = dataclasses.replace(spec, versions={**existing, version: info})
        _write_atomic(model_dir / SPEC_FILE, updated.to_json())
        os.rename(staging, model_dir / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s version %d", spec.name, version)
    return version


def add_variants(model_dir: Path, version: int, variants: Sequence[tuple[VariantSpec, Path]]) -> None:
    """Add variant files to an existing version and record them (replacing its variants of the same file).

    Each file appears under its final name whole (copied beside, then renamed); the graphs themselves are
    never touched, so a server that loaded the version keeps serving it.
    """
    spec = read_spec(model_dir)
    if version not in spec.versions or version not in list_versions(model_dir, spec.family):
        raise RepositoryError(f"{model_dir} has no version {version}")
    directory = model_dir / str(version)
    added = _copy_variants(variants, directory)
    info = spec.versions[version]
    kept = [v for v in info.variants if v.file not in {a.file for a in added}]
    info = dataclasses.replace(info, variants=kept + added)
    _write_atomic(model_dir / SPEC_FILE, dataclasses.replace(spec, versions={**spec.versions, version: info}).to_json())
    logger.info("%s v%d: added %s", spec.name, version, ", ".join(v.file for v in added))


def _copy_variants(variants: Sequence[tuple[VariantSpec, Path]], directory: Path) -> list[VariantSpec]:
    copied = []
    for variant, built in variants:
        if variant.file in FAMILY_GRAPHS_ALL or "/" in variant.file or not variant.file.endswith(".onnx"):
            raise RepositoryError(f"variant file name {variant.file!r} must be a new .onnx name in the version")
        partial = directory / f".{variant.file}.partial"
        shutil.copyfile(built, partial)
        os.replace(partial, directory / variant.file)
        copied.append(dataclasses.replace(variant, sha256=sha256_file(directory / variant.file)))
    return copied


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(text)
    os.replace(partial, path)
