"""Replay a Dockerfile of deploy/ without Docker: the environment an image would have, built on this host.

Each stage gets a directory that stands for its `/`. COPY takes files from the build
context as `.dockerignore` filters it (moby's pattern rules: last match wins, a
pattern matching a parent directory matches the file) or from an earlier stage;
the RUN that installs `deploy/requirements.py`'s list becomes a clean virtualenv of
exactly that list, cached by the list's hash; other RUN steps run as written or are
skipped, each by a rule below. A step no rule knows is an error, so a Dockerfile
cannot grow a step the replay silently leaves out.

What this cannot show: the base image's own libraries (CUDA, cuDNN, the distribution's
Python 3.12; the venvs here use this host's Python) and the user the image runs as.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

# Docker's PATH before any ENV.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Kept between runs so `make test` builds each image's venv once per requirement list, not once per run.
VENV_CACHE = Path(os.environ.get("STYLIZE_IMAGE_VENVS", Path.home() / ".cache" / "stylize" / "image-venvs"))

REQUIREMENTS_STEP = re.compile(
    r"python3? (?P<script>deploy/requirements\.py(?: [\w-]+)+) > (?P<file>\S+) "
    r"&& pip install --no-cache-dir -r (?P=file)"
)
# The distribution's Python and a venv at a fixed path: the host's Python and the cached venv stand in.
SYSTEM_PYTHON_STEP = re.compile(r"apt-get update && apt-get install -y --no-install-recommends python3 python3-venv .*")
STUBS_STEP = re.compile(r"python -m grpc_tools\.protoc .*")
WEIGHTS_STEP = re.compile(r"python -m training\.weights fetch")
# The image's user: the test runs as whoever runs it.
USER_STEP = re.compile(r"groupadd --system --gid \d+ \w+ && useradd --system [^&|;]*")


class UnknownStep(Exception):
    """A Dockerfile instruction the replay has no rule for."""


@dataclass
class Stage:
    name: str
    base: str
    root: Path
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    venv: Path | None = None
    cmd: list[str] = field(default_factory=list)

    def path(self, container_path: str) -> Path:
        """Where a path inside this stage lies on the host (relative paths start at WORKDIR)."""
        return self.root / os.path.join(self.workdir, container_path).lstrip("/")


@dataclass(frozen=True)
class Image:
    """The last stage of a replayed Dockerfile: its files, its Python and how it starts."""

    app_dir: Path
    python: Path
    command: list[str]
    env: dict[str, str]

    def environment(self, home: Path, **overrides: str) -> dict[str, str]:
        """The image's ENV (its paths moved to the replay), nothing of this process's environment."""
        return {**self.env, "HOME": str(home), **overrides}


def instructions(dockerfile: Path) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuation lines joined."""
    logical = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1].strip() + " "
            continue
        logical += line.strip()
        if logical:
            keyword, _, args = logical.partition(" ")
            yield keyword.upper(), args.strip()
        logical = ""


def dockerignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, pattern) per line of .dockerignore, in order."""
    rules = []
    for line in (context / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").lstrip("/"))
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exclude, re.compile(regex)))
    return rules


def in_context(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context holds this file: the last rule matching it or a parent directory decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for exclude, pattern in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            included = not exclude
    return included


def copy_tree(source: Path, target: Path, keep: Callable[[Path], bool] = lambda _: True) -> int:
    """A file to target, or a directory's contents into target; returns the number of files copied."""
    pairs = [(source, target)] if source.is_file() else [(p, target / p.relative_to(source)) for p in source.rglob("*")]
    copied = 0
    for path, destination in sorted(pairs):
        if path.is_file() and keep(path):
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
            copied += 1
    return copied


def copy(stage: Stage, args: str, stages: dict[str, Stage], context: Path) -> None:
    words = shlex.split(args)
    flags = {w.split("=", 1)[0]: w.split("=", 1)[1] for w in words if w.startswith("--")}
    *sources, destination = [w for w in words if not w.startswith("--")]
    unknown = set(flags) - {"--from", "--chown"}
    if unknown:
        raise UnknownStep(f"COPY {args}: the replay does not know {sorted(unknown)}")
    rules = dockerignore_rules(context)
    for source in sources:
        origin = stages[flags["--from"]].path(source) if "--from" in flags else context / source
        target = stage.path(destination)
        if origin.is_file() and (destination.endswith("/") or len(sources) > 1):
            target = target / origin.name
        if "--from" in flags:
            copied = copy_tree(origin, target)
        else:
            copied = copy_tree(origin, target, keep=lambda p: in_context(str(p.relative_to(context)), rules))
        if not copied:
            raise FileNotFoundError(f"COPY {args}: {source} has no files in the build context (.dockerignore?)")


def run(stage: Stage, command: str) -> None:
    if SYSTEM_PYTHON_STEP.fullmatch(command) or USER_STEP.fullmatch(command):
        return
    if match := REQUIREMENTS_STEP.fullmatch(command):
        listed = subprocess.run(
            [sys.executable, *shlex.split(match["script"])],
            cwd=stage.path("."),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        # One cached venv per purpose (api, worker, build-tools): a new list replaces the old venv.
        stage.venv = cached_venv("-".join(match["script"].split()[1:]).strip("-"), listed)
        return
    if WEIGHTS_STEP.fullmatch(command):  # with the image's Python, into its $TORCH_HOME
        if stage.venv is None or "TORCH_HOME" not in stage.env:
            raise UnknownStep(f"RUN {command}: needs the image's Python and TORCH_HOME set before it")
        torch_home = stage.path(stage.env["TORCH_HOME"])
        torch_home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": f"{stage.venv / 'bin'}:{DEFAULT_PATH}", "HOME": str(stage.root), "TORCH_HOME": str(torch_home)}
        env["PYTHONPATH"] = str(stage.path("."))
        subprocess.run(["bash", "-ec", command], cwd=stage.path("."), env=env, check=True, capture_output=True)
        return
    if STUBS_STEP.fullmatch(command):
        if stage.venv is None:
            raise UnknownStep(f"RUN {command}: no Python installed in stage {stage.name} before it")
        env = {"PATH": f"{stage.venv / 'bin'}:{DEFAULT_PATH}", "HOME": str(stage.root)}
        subprocess.run(["bash", "-ec", command], cwd=stage.path("."), env=env, check=True, capture_output=True)
        return
    raise UnknownStep(f"RUN {command}: tests/deploy/replay.py has no rule for this step")


def set_env(stage: Stage, args: str) -> None:
    for word in shlex.split(args):
        name, sep, value = word.partition("=")
        if not sep:
            raise UnknownStep(f"ENV {args}: use the NAME=value form")
        # Docker expands the values of earlier ENV instructions ($PATH).
        stage.env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: stage.env.get(m.group(1), ""), value)


def replay(dockerfile: Path, scratch: Path, context: Path = ROOT) -> Image:
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for keyword, args in instructions(dockerfile):
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            name = name.strip() or f"stage{len(stages)}"
            stage = stages[name] = Stage(name, base.strip(), scratch / name)
            stage.root.mkdir(parents=True)
            continue
        if stage is None:
            raise UnknownStep(f"{keyword} before FROM")
        if keyword == "WORKDIR":
            stage.workdir = os.path.join(stage.workdir, args)
            stage.path(".").mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            copy(stage, args, stages, context)
        elif keyword == "RUN":
            run(stage, args)
        elif keyword == "ENV":
            set_env(stage, args)
        elif keyword == "CMD":
            stage.cmd = json.loads(args)  # the exec form only: no shell between the runtime and Python
        elif keyword not in ("EXPOSE", "LABEL", "USER"):  # USER: tests/deploy/test_dockerfiles.py
            raise UnknownStep(f"{keyword} {args}: tests/deploy/replay.py has no rule for it")
    assert stage is not None and stage.venv is not None, f"{dockerfile}: the last stage installs no requirements"
    env = {name: rebase(stage, value) for name, value in stage.env.items()}
    env["PATH"] = f"{stage.venv / 'bin'}:{env['PATH']}"
    python = stage.venv / "bin" / "python"
    executable = shutil.which(stage.cmd[0], path=env["PATH"])
    assert executable and Path(executable).parent == python.parent, f"CMD {stage.cmd} is not the image's Python"
    return Image(stage.path("."), python, [str(python), *stage.cmd[1:]], env)


def rebase(stage: Stage, value: str) -> str:
    """An ENV value's paths that lie in the stage (WORKDIR and below) moved to the replay's directory."""
    parts = value.split(":")
    return ":".join(str(stage.path(p)) if p.startswith("/") and stage.path(p).exists() else p for p in parts)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another test run building the same venv: wait for it
        yield


def cached_venv(purpose: str, requirements: list[str]) -> Path:
    """A virtualenv holding exactly these requirements (and what they pull in), built once per list.

    Keyed by the list and this Python's version. Building a purpose's venv for a new list drops the
    previous one (the worker's is gigabytes of CUDA libraries).
    """
    key = hashlib.sha256("\n".join([sys.version, *requirements]).encode()).hexdigest()[:16]
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    venv = VENV_CACHE / f"{purpose}-{key}"
    with locked(VENV_CACHE / f"{purpose}.lock"):
        if (venv / ".complete").exists():
            return venv
        for old in VENV_CACHE.glob(f"{purpose}-*"):
            shutil.rmtree(old, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        listed = venv / "requirements.txt"
        listed.write_text("".join(r + "\n" for r in requirements))
        install = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            + ["-r", str(listed)],
            capture_output=True,
            text=True,
        )
        if install.returncode:
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(f"pip install -r {listed} failed:\n{install.stdout}\n{install.stderr}")
        (venv / ".complete").write_text("\n".join(requirements) + "\n")
    return venv
