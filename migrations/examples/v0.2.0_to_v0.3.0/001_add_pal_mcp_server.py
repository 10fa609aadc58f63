"""Migration: v0.2.0 to v0.3.0 - Add the PAL MCP server

Dopemux 0.3.0 ships PAL, a reasoning MCP server that keeps its threads in ConPort's
database. Adding it touches three files, each edited in place so that every line this
migration does not own stays byte for byte (flow lists such as ``test: [ "CMD", ... ]``,
comments, quoting, list- or map-form environments):

* ``docker-compose.yml``: a new ``mcp-pal`` service (marked with an end-of-line comment);
  ``PAL_URL`` in the ``mcp-broker`` service's environment (map form) and
  ``CONPORT_PAL_ENABLED`` in the ``conport`` service's environment (list form), both through
  ``edit.compose_env``, which writes in the form the file uses;
* ``config/mcp/broker.yaml``: a ``pal`` entry under ``servers:`` (marked);
* ``.env``: ``PAL_API_KEY=`` appended, for the operator to fill in (``edit.edit_env`` keeps
  the file's comments, ``export`` lines and quoting).

Forward is idempotent: what is already there is left alone. Backward removes only what
carries our marker, or, for the environment entries that cannot carry one, what still has
the value this migration wrote: an API key the operator filled in is kept. All files are
checked before any is written: a known problem leaves all three untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dopemux_update import edit

MIGRATION_INFO = {
    "version_from": "0.2.0",
    "version_to": "0.3.0",
    "description": "Add the PAL MCP server: compose service, broker entry, .env key",
    "breaking_changes": False,
    "estimated_duration_seconds": 5,
    "requires_restart": ["mcp-broker", "conport", "mcp-pal"],
    "backup_required": True,
}

MARKER = "added by dopemux-update 0.3.0 (migration 001), removed on rollback"
COMPOSE = "docker-compose.yml"
BROKER = "config/mcp/broker.yaml"
ENV = ".env"

# Environment entries: (service, name, value). Without a marker, backward removes them
# only while they still hold this value.
SERVICE_ENV = (
    ("mcp-broker", "PAL_URL", "http://mcp-pal:3008"),
    ("conport", "CONPORT_PAL_ENABLED", "true"),
)
ENV_KEY = "PAL_API_KEY"


def pal_service() -> dict[str, Any]:
    return {
        "image": "ghcr.io/dopemux/pal-mcp:0.3.0",
        "restart": "unless-stopped",
        "depends_on": ["mcp-broker", "conport"],
        "ports": [edit.quoted("3008:3008")],
        "volumes": ["./.dopemux:/data"],
        "environment": [
            "PAL_API_KEY=${PAL_API_KEY:?set PAL_API_KEY in .env}",
            "CONPORT_DB_PATH=/data/conport.db",
        ],
    }


def pal_server() -> dict[str, Any]:
    return {"image": "ghcr.io/dopemux/pal-mcp:0.3.0", "port": 3008, "enabled": True}


class ConfigError(Exception):
    """A known condition under which the files cannot be edited safely."""


def require_mapping(doc: Any, key: str, relpath: str) -> None:
    if not isinstance(doc, Mapping) or not isinstance(doc.get(key), Mapping):
        raise ConfigError(f"{relpath} has no top-level '{key}:' mapping")


def add_marked(doc: Any, path: tuple[str, str], value: dict[str, Any], relpath: str) -> None:
    if edit.get_in(doc, path) is not None:
        print(f"  ✅ {'.'.join(path)} already in {relpath}, leaving it")
        return
    print(f"  → Adding {'.'.join(path)} to {relpath}")
    edit.set_in(doc, path, value, comment=MARKER)


def remove_marked(doc: Any, path: tuple[str, str], relpath: str) -> None:
    if edit.get_in(doc, path) is None:
        return
    if edit.get_comment(doc, path) != MARKER:
        print(f"  ✅ {'.'.join(path)} in {relpath} was not added by this migration, keeping it")
        return
    print(f"  → Removing {'.'.join(path)} from {relpath}")
    edit.delete_in(doc, path)


def migrate_forward(project_root: Path) -> bool:
    """Add the mcp-pal service, the broker's pal entry and PAL_API_KEY."""
    root = Path(project_root)
    try:
        # Leaving the stack normally writes every changed file; raising writes none.
        with contextlib.ExitStack() as stack:
            compose = stack.enter_context(edit.edit_yaml(root / COMPOSE))
            broker = stack.enter_context(edit.edit_yaml(root / BROKER))
            env = stack.enter_context(edit.edit_env(root / ENV))
            require_mapping(compose, "services", COMPOSE)
            require_mapping(broker, "servers", BROKER)
            add_marked(compose, ("services", "mcp-pal"), pal_service(), COMPOSE)
            for service, name, value in SERVICE_ENV:
                environment = edit.compose_env(compose, service)
                if name not in environment:
                    print(f"  → Setting {name} for {service}")
                    environment[name] = value
            add_marked(broker, ("servers", "pal"), pal_server(), BROKER)
            if ENV_KEY not in env:
                print(f"  → Adding {ENV_KEY}= to {ENV}: fill it in before starting mcp-pal")
                env[ENV_KEY] = ""
    except (ConfigError, edit.EditError) as exc:
        print(f"  ❌ {exc}")
        return False
    return True


def migrate_backward(project_root: Path) -> bool:
    """Remove what migrate_forward added, leaving the files as they were."""
    root = Path(project_root)
    try:
        with contextlib.ExitStack() as stack:
            compose = stack.enter_context(edit.edit_yaml(root / COMPOSE))
            broker = stack.enter_context(edit.edit_yaml(root / BROKER))
            env = stack.enter_context(edit.edit_env(root / ENV))
            if env.get(ENV_KEY) == "":
                print(f"  → Removing {ENV_KEY} from {ENV}")
                del env[ENV_KEY]
            elif ENV_KEY in env:
                print(f"  ✅ {ENV_KEY} was filled in by hand, keeping it")
            remove_marked(broker, ("servers", "pal"), BROKER)
            for service, name, value in reversed(SERVICE_ENV):
                environment = edit.compose_env(compose, service)
                if environment.get(name) == value:
                    print(f"  → Removing {name} from {service}")
                    del environment[name]
            remove_marked(compose, ("services", "mcp-pal"), COMPOSE)
    except edit.EditError as exc:
        print(f"  ❌ {exc}")
        return False
    return True
