"""A bounded LRU of arbitrary-style statistics, keyed by the style image's bytes and the model version.

A style image's relu4_1 statistics are 4 KB, and computing them costs a VGG
pass over the image: callers who send the same painting again (the common case)
skip that pass. Thread-safe: executor threads share it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np


class StyleStatsCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, int, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: str, version: int, image_bytes: bytes) -> tuple[str, int, str]:
        return model, version, hashlib.sha256(image_bytes).hexdigest()

    def get_or_compute(self, key: tuple[str, int, str], compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """The cached statistics, or `compute()`'s result stored; and whether it was a hit."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found, True
            self.misses += 1
        value = compute()  # outside the lock: a VGG pass must not serialise other requests
        if self.max_entries:
            with self._lock:
                self._entries[key] = value
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return value, False

    def __len__(self) -> int:
        return len(self._entries)
