"""`python -m server`: parse the configuration once, configure logging, serve."""

from __future__ import annotations

import asyncio
import logging
import sys

from server.config import load_config
from server.runtime import ProviderUnavailable


def main() -> None:
    config = load_config()
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    from server.main import serve  # after logging is configured: importing it loads ONNX Runtime

    try:
        asyncio.run(serve(config))
    except ProviderUnavailable as exc:
        logging.getLogger("server").error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
