"""OptimizationRequest -> a validated JobSpec, and JobRecord -> the Job message.

Every field is checked here, with messages that say what to change; limits name
the setting that sets them. Unset fields take the optimiser's defaults, which
the workers report (OptimizerInfo), so this module needs neither torch nor a
copy of training/gatys.py's defaults.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from server.errors import InvalidRequest
from server.jobs.model import JobLimits, JobRecord, JobSpec, JobState, OptimizerInfo
from server.validation import encoded_image
from stylize.v1 import stylize_pb2 as pb

MAX_STYLE_IMAGES = 8
MIN_SIDE = 16  # VGG pools four times before relu5_1
MAX_WEIGHT = 1e12

INITS = {
    pb.INITIALIZATION_UNSPECIFIED: "content",
    pb.INITIALIZATION_CONTENT: "content",
    pb.INITIALIZATION_NOISE: "noise",
    pb.INITIALIZATION_STYLE: "style",
    pb.INITIALIZATION_IMAGE: "image",
}
OPTIMIZERS = {pb.OPTIMIZER_UNSPECIFIED: "lbfgs", pb.OPTIMIZER_LBFGS: "lbfgs", pb.OPTIMIZER_ADAM: "adam"}
POOLINGS = {pb.POOLING_UNSPECIFIED: "max", pb.POOLING_MAX: "max", pb.POOLING_AVERAGE: "avg"}
NETWORKS = {pb.LOSS_NETWORK_UNSPECIFIED: "vgg16", pb.LOSS_NETWORK_VGG16: "vgg16", pb.LOSS_NETWORK_VGG19: "vgg19"}
FORMATS = {pb.OUTPUT_FORMAT_UNSPECIFIED: "png", pb.OUTPUT_FORMAT_PNG: "png", pb.OUTPUT_FORMAT_JPEG: "jpeg"}
STATES = {
    JobState.QUEUED: pb.JOB_STATE_QUEUED,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}


def _weight(name: str, value: float, low: float = 0.0, high: float = MAX_WEIGHT) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def _enum(name: str, value: int, table: dict[Any, str]) -> str:
    if value not in table:
        raise InvalidRequest(f"{name} {value} is not a known value of the enum")
    return table[value]


def _schedule(request: pb.OptimizationRequest, limits: JobLimits, info: OptimizerInfo) -> list[tuple[int, int]]:
    """The (max_side, iterations) stages: the request's schedule, or one stage of max_side and iterations."""
    if request.schedule:
        if request.max_side or request.iterations:
            raise InvalidRequest("give either schedule or max_side/iterations, not both (schedule overrides them)")
        stages = [(stage.max_side, stage.iterations) for stage in request.schedule]
    else:
        # Unset: the optimiser's default (512 px, 1000 iterations), or this server's limit where that is lower.
        side = request.max_side or min(int(info.defaults["sizes"][-1]), limits.max_side)
        iterations = request.iterations or min(int(info.defaults["iterations"][-1]), limits.max_iterations)
        stages = [(side, iterations)]
    for index, (side, iterations) in enumerate(stages):
        where = f"schedule[{index}]." if request.schedule else ""
        if side > limits.max_side:
            raise InvalidRequest(
                f"{where}max_side {side} is over this server's limit of {limits.max_side} px (STYLIZE_JOB_MAX_SIDE)"
            )
        if side < MIN_SIDE:
            raise InvalidRequest(f"{where}max_side must be at least {MIN_SIDE} px, got {side}")
        if iterations < 1:
            raise InvalidRequest(f"{where}iterations must be at least 1")
    total = sum(iterations for _, iterations in stages)
    if total > limits.max_iterations:
        raise InvalidRequest(
            f"iterations {total} are over this server's limit of {limits.max_iterations} "
            "(STYLIZE_JOB_MAX_ITERATIONS); ask for fewer"
        )
    return stages


def job_spec(request: pb.OptimizationRequest, limits: JobLimits, info: OptimizerInfo) -> JobSpec:
    content = encoded_image(request.content, "content")
    if not request.style_images:
        raise InvalidRequest("style_images is empty: send at least one style image")
    if len(request.style_images) > MAX_STYLE_IMAGES:
        raise InvalidRequest(f"at most {MAX_STYLE_IMAGES} style images, got {len(request.style_images)}")
    styles = tuple(encoded_image(image, f"style_images[{i}]") for i, image in enumerate(request.style_images))
    stages = _schedule(request, limits, info)
    network = _enum("loss_network", request.loss_network, NETWORKS)
    options: dict[str, Any] = {
        "sizes": tuple(side for side, _ in stages),
        "iterations": tuple(iterations for _, iterations in stages),
        "init": _enum("init", request.init, INITS),
        "optimizer": _enum("optimizer", request.optimizer, OPTIMIZERS),
        "pooling": _enum("pooling", request.pooling, POOLINGS),
        "loss_network": network,
        "preserve_color": request.preserve_color,
        "preview_every": request.preview_every,
    }

    if request.style_weights:
        if len(request.style_weights) != len(request.style_images):
            raise InvalidRequest(
                f"style_weights has {len(request.style_weights)} values for {len(request.style_images)} style "
                "images; give one per image or none (equal weights)"
            )
        blend = tuple(_weight(f"style_weights[{i}]", w) for i, w in enumerate(request.style_weights))
        if sum(blend) <= 0:
            raise InvalidRequest("style_weights must not all be zero")
        options["style_blend_weights"] = blend
    for name in ("content_weight", "style_weight", "tv_weight"):
        if request.HasField(name):
            options[name] = _weight(name, getattr(request, name))

    if network not in info.layers:
        raise InvalidRequest(
            f"the workers' loss weights ({info.loss_weights}) have no {network.upper()}; "
            f"ask for {' or '.join(name.upper() for name in info.layers)}, or start the workers with weights "
            f"that have it (--loss-weights torchvision for torchvision's {network.upper()} file)"
        )
    layers = info.layers[network]
    for layer in [*request.content_layers, *(item.layer for item in request.style_layers)]:
        if layer not in layers:
            raise InvalidRequest(f"{network} has no layer {layer!r}; its layers are {', '.join(layers)}")
    if request.content_layers:
        options["content_layers"] = tuple(request.content_layers)
    if request.style_layers:
        names = [item.layer for item in request.style_layers]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"style_layers names a layer twice: {names}")
        options["style_layers"] = tuple(names)
        weights = [_weight(f"weight of style layer {item.layer}", item.weight) for item in request.style_layers]
        if any(weights):  # all zero: the weights were left unset, so the layers weigh equally
            options["style_layer_weights"] = tuple(weights)

    init_image = encoded_image(request.init_image, "init_image") if request.HasField("init_image") else None
    if options["init"] == "image" and init_image is None:
        raise InvalidRequest("init is INITIALIZATION_IMAGE but init_image.data is empty")
    if options["init"] != "image" and init_image is not None:
        raise InvalidRequest("init_image is set but init is not INITIALIZATION_IMAGE; set both or neither")
    if request.HasField("learning_rate"):
        if options["optimizer"] != "adam":
            raise InvalidRequest("learning_rate applies to OPTIMIZER_ADAM only; L-BFGS takes no step size")
        options["learning_rate"] = _weight("learning_rate", request.learning_rate, 1e-6, 10.0)
    if request.HasField("style_scale"):
        scale = _weight("style_scale", request.style_scale, 0.01, 4.0)
        largest = max(side for side, _ in stages) * scale
        if largest > limits.max_side:
            raise InvalidRequest(
                f"style_scale {scale:g} makes the style image {largest:.0f} px, over this server's limit of "
                f"{limits.max_side} px (STYLIZE_JOB_MAX_SIDE)"
            )
        options["style_scale"] = scale
    if request.HasField("seed"):
        options["seed"] = request.seed

    budget = request.time_budget_seconds
    if not math.isfinite(budget) or budget < 0 or budget > limits.max_time_budget_seconds:
        raise InvalidRequest(
            f"time_budget_seconds must be between 0 (the server's limit) and this server's limit of "
            f"{limits.max_time_budget_seconds:g} s (STYLIZE_JOB_TIME_BUDGET_SECONDS), got {budget:g}"
        )
    budget = budget or limits.max_time_budget_seconds
    options["time_budget_seconds"] = budget
    return JobSpec(
        content=content,
        styles=styles,
        init_image=init_image,
        options=options,
        iterations=sum(options["iterations"]),
        output_format=_enum("output_format", request.output_format, FORMATS),
        time_budget_seconds=budget,
    )


def _timestamp(seconds: float) -> Timestamp | None:
    if not seconds:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_message(record: JobRecord) -> pb.Job:
    losses = record.losses
    return pb.Job(
        id=record.id,
        state=STATES[record.state],
        iteration=record.iteration,
        iterations=record.iterations,
        losses=pb.LossTerms(content=losses.content, style=losses.style, tv=losses.tv, total=losses.total),
        preview=pb.Image(data=record.preview) if record.preview else None,
        result=pb.Image(data=record.result) if record.result else None,
        error=record.error,
        worker=record.worker,
        stage=record.stage,
        attempt=record.attempt,
        created_at=_timestamp(record.created_at),
        started_at=_timestamp(record.started_at),
        finished_at=_timestamp(record.finished_at),
        queue_position=record.queue_position,
    )
