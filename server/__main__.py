"""`python -m server`: parse the configuration once, configure logging, serve."""

from __future__ import annotations

import asyncio
import logging
import sys

from server.config import load_config


def main() -> None:
    config = load_config()
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    # Before the buffers it is about exist (server/allocator.py).
    from server.allocator import retain_freed_memory

    if retain_freed_memory(config.malloc_keep_mib << 20):
        logging.getLogger("server").info("malloc keeps up to %d MiB freed per arena", config.malloc_keep_mib)
    # After logging is configured: importing these loads ONNX Runtime.
    from server.auth import InsecureBinding
    from server.main import serve
    from server.runtime import ProviderUnavailable

    try:
        asyncio.run(serve(config))
    except (ProviderUnavailable, InsecureBinding, OSError, ValueError) as exc:
        # Configuration the operator must change: one clear line, no traceback, exit status 2.
        logging.getLogger("server").error("cannot start: %s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
