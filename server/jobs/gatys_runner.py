"""The Gatys optimiser inside the job process: the one module of server/ that imports torch and training/.

The contract follows Triton's python_backend: `initialize(settings)` once (load the
loss network), `execute(job)` per job with exactly one JobFinished per job,
`finalize()` at the end. server/jobs/job_process.py drives it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import torch

from core import codec
from server.jobs.model import JobFinished, JobProcessSettings, JobProgress, JobState, LossTerms, OptimizerInfo, RunJob
from training import gatys
from training.loop import pick_device
from training.vgg import BLOCKS, VGGFeatures, layer_names, load_vgg
from training.weights import networks_for

logger = logging.getLogger(__name__)


class GatysRunner:
    """The job process's optimiser: `initialize` once, `execute` per job (one JobFinished each), `finalize`."""

    def __init__(self) -> None:
        self.networks: dict[str, VGGFeatures] = {}
        self.config: JobProcessSettings | None = None
        self.weights_tag = ""

    def initialize(self, config: JobProcessSettings) -> OptimizerInfo:
        """Load the default loss network; a missing weights file fails here, with the resolver's message."""
        self.config = config
        torch.set_num_threads(config.threads)
        self.device = pick_device(config.device)
        self.network(gatys.GatysConfig.loss_network)
        defaults = {f.name: f.default for f in dataclasses.fields(gatys.GatysConfig)} | {"precision": config.precision}
        # Only the networks these weights provide: a job asking for another is refused at submission.
        provided = networks_for(config.loss_weights)
        layers = {arch: tuple(layer_names(arch)) for arch in BLOCKS if arch in provided}
        return OptimizerInfo(defaults=defaults, layers=layers, loss_weights=self.weights_tag, device=self.device.type)

    def network(self, arch: str) -> VGGFeatures:
        """The whole network up to its last relu, loaded on first use; each job takes the slice it needs."""
        if arch not in self.networks:
            assert self.config is not None
            last_relu = [name for name in layer_names(arch) if name.startswith("relu")][-1]
            started = time.perf_counter()
            vgg, info = load_vgg(arch, [last_relu], weights=self.config.loss_weights)
            self.networks[arch] = vgg.to(self.device)
            self.weights_tag = self.weights_tag or info.tag
            logger.info("loaded %s (%s) in %.1f s", arch, info.tag, time.perf_counter() - started)
        return self.networks[arch]

    def execute(self, job: RunJob, send: Callable[[object], None], cancelled: Callable[[], bool]) -> JobFinished:
        """Run one job, sending JobProgress as it goes; returns its JobFinished (never raises)."""
        assert self.config is not None
        iteration = 0
        try:
            spec = job.spec
            options = {
                **spec.options,
                "loss_weights": self.config.loss_weights,
                "device": self.config.device,
                "precision": self.config.precision,
            }
            config = gatys.GatysConfig(**options)
            largest = max(config.sizes)
            content = self._decode(spec.content, "content image", largest)
            styles = [
                self._decode(data, f"style image {i + 1}", round(largest * config.style_scale))
                for i, data in enumerate(spec.styles)
            ]
            init = self._decode(spec.init_image, "init image", largest) if spec.init_image else None
            network = self.network(config.loss_network)
            last = JobProgress(job.job_id, 0, 0, LossTerms())

            def on_progress(p: gatys.Progress) -> None:
                nonlocal iteration, last
                iteration = p.iteration
                last = JobProgress(job.job_id, p.iteration, p.stage, LossTerms(**p.losses))
                send(last)

            def on_preview(_: int, image: torch.Tensor) -> None:
                send(dataclasses.replace(last, preview=codec.encode_image(gatys.to_rgb8(image))))

            result = gatys.optimize(
                content,
                styles,
                config,
                init_image=init,
                network=network,
                on_progress=on_progress,
                on_preview=on_preview,
                should_stop=cancelled,
            )
            fmt = codec.OutputFormat.JPEG if spec.output_format == "jpeg" else codec.OutputFormat.PNG
            data = codec.encode_image(gatys.to_rgb8(result), fmt=fmt)
            return JobFinished(job.job_id, JobState.SUCCEEDED, iteration, result=data)
        except gatys.Cancelled as exc:
            return JobFinished(job.job_id, JobState.CANCELLED, exc.iteration, error="cancelled")
        except gatys.TimeBudgetExceeded as exc:
            return JobFinished(job.job_id, JobState.FAILED, exc.iteration, error=str(exc))
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            side = max(job.spec.options["sizes"])
            error = f"the worker ran out of GPU memory at {side} px; ask for a smaller max_side"
            return JobFinished(job.job_id, JobState.FAILED, iteration, error=error)
        except (ValueError, OSError) as exc:  # bad images, settings or weights: the message says what to change
            return JobFinished(job.job_id, JobState.FAILED, iteration, error=str(exc))
        except Exception as exc:
            logger.exception("job %s failed", job.job_id)
            return JobFinished(job.job_id, JobState.FAILED, iteration, error=f"internal error: {exc!r}")

    def _decode(self, data: bytes, what: str, max_side: int) -> torch.Tensor:
        assert self.config is not None
        rgb = codec.decode_image(data, max_pixels=self.config.max_pixels, what=what).rgb
        # No larger than the job needs: a 16-megapixel photo for a 512 px job would cost 200 MB as floats.
        return gatys.to_tensor(codec.resize_max_side(rgb, max_side))

    def finalize(self) -> None:
        self.networks.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
