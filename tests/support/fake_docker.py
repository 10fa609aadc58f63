#!/usr/bin/env python3
"""A stand-in for ``docker`` in tests: answers ``compose ... restart|up -d|ps`` from a JSON
state file the test controls (``FAKE_DOCKER_STATE``) and logs every call
(``FAKE_DOCKER_LOG``).

State: ``{"services": {NAME: {"state": "running", "health": "", "on_restart": {...}}},
"fail": [NAME, ...], "array": false}``. ``on_restart`` (optional) replaces the service's
entry after a restart or ``up -d``; ``fail`` makes restarting a service exit 1; ``array``
prints ``ps`` as one JSON array instead of one object a line.
"""

import json
import os
import sys
from pathlib import Path


def main() -> int:
    state_path = Path(os.environ["FAKE_DOCKER_STATE"])
    args = sys.argv[1:]
    with Path(os.environ["FAKE_DOCKER_LOG"]).open("a") as log:
        log.write(os.getcwd() + "\t" + " ".join(args) + "\n")
    state = json.loads(state_path.read_text())
    if not args or args[0] != "compose":
        print("fake docker: only 'compose' is known", file=sys.stderr)
        return 2
    rest = args[1:]
    while rest and rest[0] == "-f":
        rest = rest[2:]
    services = state.setdefault("services", {})
    if rest[:1] == ["ps"]:
        rows = [
            {"Service": name, "State": s.get("state", "running"), "Health": s.get("health", "")}
            for name, s in services.items()
            if s.get("state") != "absent"
        ]
        if state.get("array"):
            print(json.dumps(rows))
        else:
            for row in rows:
                print(json.dumps(row))
        return 0
    if rest[:1] == ["restart"] or rest[:2] == ["up", "-d"]:
        name = rest[-1]
        if name in state.get("fail", []) or name not in services:
            print(f"no such service: {name}", file=sys.stderr)
            return 1
        services[name] = services[name].get("on_restart", {**services[name], "state": "running"})
        state_path.write_text(json.dumps(state))
        return 0
    print(f"fake docker: unknown command {rest}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
