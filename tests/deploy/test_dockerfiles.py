"""What the Dockerfiles promise beyond hadolint (`make lint`): pinned bases, a numeric non-root user, a build
context of only what they copy, and requirement lists that keep torch and ONNX Runtime on their own sides."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import requirements
from tests.conftest import ROOT
from tests.deploy.replay import UnknownStep, dockerignore_rules, in_context, instructions, replay

DOCKERFILES = sorted((ROOT / "deploy").glob("*.Dockerfile"))
# An exact release (3.12.12-slim-trixie, 13.0.2-cudnn-runtime-ubuntu24.04) or a digest: never `latest` or `3.12`.
PINNED = re.compile(r"[\w./-]+(?::\d+\.\d+\.\d+[\w.-]*|@sha256:[0-9a-f]{64})")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_pinned_and_the_image_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    steps = list(instructions(dockerfile))
    bases = [args.split(" AS ")[0] for keyword, args in steps if keyword == "FROM"]
    stages = {args.split(" AS ")[1] for keyword, args in steps if keyword == "FROM" and " AS " in args}
    for base in bases:
        assert base in stages or PINNED.fullmatch(base), f"{dockerfile.name}: {base} is not an exact tag or digest"
    last_stage = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM") :]
    users = [args for keyword, args in last_stage if keyword == "USER"]
    ids = users[-1].split(":") if users else []
    assert ids and all(i.isdigit() and int(i) > 0 for i in ids), f"{dockerfile.name}: USER {users} (uid:gid, not 0)"


def test_the_build_context_holds_what_the_dockerfiles_copy_and_nothing_private() -> None:
    rules = dockerignore_rules(ROOT)
    copied = {
        args.split()[-2]
        for dockerfile in DOCKERFILES
        for keyword, args in instructions(dockerfile)
        if keyword == "COPY" and "--from=" not in args
    }
    for source in copied:
        assert in_context(source.rstrip("/"), rules), f"{source} is copied but .dockerignore leaves it out"
    kept_out = [
        ".git/HEAD",
        ".venv/bin/python",
        "runs/mine/checkpoint.pt",
        "training/checkpoint.pt",
        "server/__pycache__/main.cpython-312.pyc",
        ".cache/tools/kubectl",
        ".mypy_cache/3.11/server",
        "bench/.cache/x.npy",
        "stylize/v1/stylize_pb2.py",  # this checkout's stubs: the image makes its own
        "models/starry_night/1/model.onnx",  # mounted at run time
        "data/content/kodim01.png",
        "weights/hub/checkpoints/vgg19-dcbb9e9d.pth",
    ]
    assert not [path for path in kept_out if in_context(path, rules)]


def test_each_image_requirement_list_is_pinned_and_on_its_side_of_the_torch_boundary() -> None:
    api, worker = requirements.image_requirements("api"), requirements.image_requirements("worker")
    for listed in (api, worker, requirements.build_tools()):
        assert listed and all(re.fullmatch(r"[\w.-]+==[\w.]+", r) for r in listed), listed
        assert len(listed) == len({requirements.requirement_name(r) for r in listed})
    api_names = {requirements.requirement_name(r) for r in api}
    worker_names = {requirements.requirement_name(r) for r in worker}
    assert {"onnxruntime-gpu", "onnx", "celery"} <= api_names and not {"torch", "torchvision"} & api_names
    assert {"torch", "celery"} <= worker_names and not {"onnxruntime-gpu", "onnxruntime"} & worker_names
    # What the Dockerfiles run prints the same list.
    printed = subprocess.run(
        [sys.executable, "deploy/requirements.py", "api"], cwd=ROOT, check=True, capture_output=True, text=True
    )
    assert printed.stdout.split() == api


def test_the_replay_refuses_a_step_it_has_no_rule_for(tmp_path: Path) -> None:
    dockerfile = tmp_path / "x.Dockerfile"
    dockerfile.write_text("FROM python:3.12.12-slim-trixie\nRUN curl -fsSL https://example.com/x | sh\n")
    with pytest.raises(UnknownStep, match="no rule for this step"):
        replay(dockerfile, tmp_path / "scratch")
