"""``python -m dopemux_update`` and the ``dopemux-update`` script: the command line."""

import gc
import sys


def run() -> None:
    """Run the command line and exit with its code.

    Its modules (click's, ours) are imported with the garbage collector paused, then frozen:
    they live as long as the process, and the collections that walk them while they load
    cost every command several milliseconds of its start-up. Collection resumes before the
    command runs.
    """
    gc.disable()
    try:
        from .cli import main  # noqa: PLC0415 - imported here, with the collector paused
    finally:
        gc.freeze()
        gc.enable()
    sys.exit(main())


if __name__ == "__main__":
    run()
