"""A Gatys worker process in the foreground (`make worker`).

The job queue arrives with the Gatys-jobs issue; until then this entry point
says so rather than pretending to work.
"""

from __future__ import annotations

import sys


def main() -> None:
    sys.exit("stylize worker: the Gatys job queue is not built yet (see the job-queue issues)")


if __name__ == "__main__":
    main()
