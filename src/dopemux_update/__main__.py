"""``python -m dopemux_update`` and the ``dopemux-update`` script: the command line."""

import gc
import sys

#: New objects between two collections of the youngest generation, for a command's process.
YOUNG_OBJECTS = 50_000


def run() -> None:
    """Run the command line and exit with its code.

    Its modules (click's, ours) are imported with the garbage collector paused, then frozen:
    they live as long as the process, and the collections that walk them while they load
    cost every command several milliseconds of its start-up. Collection resumes before the
    command runs, for every :data:`YOUNG_OBJECTS` new objects rather than 700: a backup or a
    restore makes tens of thousands of manifest and tree entries, which hold no cycles, and
    a collection every 700 of them walked them all for nothing (6-12 ms of those commands,
    2-5 ms of an update). Garbage in cycles is still collected, in larger batches.
    """
    gc.disable()
    try:
        from .cli import main  # noqa: PLC0415 - imported here, with the collector paused
    finally:
        gc.freeze()
        gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])
        gc.enable()
    sys.exit(main())


if __name__ == "__main__":
    run()
