"""The model repository writer: adds a version to models/<name>/ without a reader ever seeing half of it.

The layout and model.json schema belong to server/repository.py, the one reader;
this module only writes them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.repository import (
    NAME_PATTERN,
    SPEC_FILE,
    ModelSpec,
    RepositoryError,
    VersionInfo,
    list_versions,
    read_spec,
)
from training.weights import sha256_file

logger = logging.getLogger(__name__)


def write_version(
    root: Path,
    spec: ModelSpec,
    graph_files: dict[str, Path],
    provenance: dict[str, Any],
    version: int | None = None,
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
        for field in ("family", "styles", "graphs"):
            if getattr(current, field) != getattr(spec, field):
                raise RepositoryError(
                    f"{model_dir}: a new version must keep the model's {field} "
                    f"({getattr(current, field)!r}); export under a new --name instead"
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
        )
        updated = dataclasses.replace(spec, versions={**existing, version: info})
        _write_atomic(model_dir / SPEC_FILE, updated.to_json())
        os.rename(staging, model_dir / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s version %d", spec.name, version)
    return version


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(text)
    os.replace(partial, path)
