"""``python -m dopemux_update``: the command line."""

from .cli import main

raise SystemExit(main())
