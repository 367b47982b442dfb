"""Flags and config files -> one frozen dataclass, parsed once in an entry point's main().

Every field of the dataclass becomes a flag (`style_weight` -> `--style-weight`)
with the field's `help` metadata. `--config run.toml` (or .json) supplies values
first; flags given on the command line win. Tuples are comma-separated lists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def parse_config(cls: type[T], argv: Sequence[str] | None = None, *, description: str = "") -> T:
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, help="a .toml or .json file of field values; flags override it")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        help_text = f.metadata.get("help", "")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text + (" (required)" if required else ""))
    args = parser.parse_args(argv)

    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_read_config_file(args.config))
    unknown = set(values) - {f.name for f in fields}
    if unknown:
        parser.error(f"{args.config}: unknown keys {sorted(unknown)}")
    for f in fields:
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = given
    missing = [
        f.name
        for f in fields
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        parser.error("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
    try:
        return cls(**{name: _convert(hints[name], value) for name, value in values.items()})
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def _read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    return {key.replace("-", "_"): value for key, value in data.items()}


def _convert(kind: Any, value: Any) -> Any:
    """A flag string or a config-file value -> the field's type."""
    origin = typing.get_origin(kind)
    if origin is types.UnionType and type(None) in typing.get_args(kind):  # X | None: "none" or an X
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _convert(inner, value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = typing.get_args(kind)[0]
        return tuple(_convert(inner, item.strip() if isinstance(item, str) else item) for item in items if item != "")
    if kind is bool:
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    if kind in (int, float, str):
        return kind(value)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
