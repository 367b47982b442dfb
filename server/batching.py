"""Dynamic batching: same-shape inferences that arrive within a short window run as one batch.

The first call of a group waits up to `window_s` (or until `max_batch` calls
joined), stacks the inputs along the batch axis, runs the graph once and hands
each caller its slice. Every exported graph has a dynamic batch axis, so any
family batches; calls batch only with calls of the same model version, image
size and non-image input shapes.

Off by default: on this project's CPU a batch of N takes N times as long as one
image (ONNX Runtime already uses every core for one), so waiting only adds
latency (bench/batching.py). On a GPU, small images leave the device idle and
batching can pay; measure with the bench before turning it on.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server import metrics


@dataclass
class _Group:
    items: list[dict[str, np.ndarray]] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class Batcher:
    def __init__(self, window_s: float, max_batch: int) -> None:
        self.window_s = window_s
        self.max_batch = max_batch
        self._open: dict[Hashable, _Group] = {}
        self._lock = threading.Lock()

    def run(self, key: Hashable, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """session.run(None, feeds)[0] for a batch-of-one `feeds`, possibly inside a larger batch."""
        with self._lock:
            group = self._open.get(key)
            leader = group is None
            if group is None:
                group = self._open[key] = _Group()
            index = len(group.items)
            group.items.append(feeds)
            if len(group.items) >= self.max_batch:
                del self._open[key]  # full: later calls start a new group
                group.full.set()
        if not leader:
            group.done.wait()
        else:
            group.full.wait(self.window_s)
            with self._lock:
                if self._open.get(key) is group:
                    del self._open[key]
            try:
                stacked = {name: np.concatenate([item[name] for item in group.items]) for name in feeds}
                group.result = np.asarray(session.run(None, stacked)[0])
            except BaseException as exc:  # every caller of the group gets the error
                group.error = exc
            metrics.BATCH_SIZE.observe(len(group.items))
            group.done.set()
        if group.error is not None:
            raise group.error
        assert group.result is not None
        return group.result[index : index + 1]


def shape_key(model: str, version: int, feeds: dict[str, np.ndarray]) -> tuple[Any, ...]:
    return (model, version, *sorted((name, array.shape) for name, array in feeds.items()))


def unbatched(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    out = np.asarray(session.run(None, feeds)[0])
    metrics.BATCH_SIZE.observe(1)
    return out
