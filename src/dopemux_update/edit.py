"""Helpers for migrations to change an installation safely.

Files are replaced atomically (:func:`write_text`, :func:`write_bytes`, :func:`atomic_write`)
and moved with their emptied folders cleaned up (:func:`move`); YAML files are edited in
place, rewriting only the lines of what changed (:func:`edit_yaml`); JSON files keep their key
order and indentation (:func:`edit_json`); ``.env`` files keep comments, ``export`` and quoting
(:func:`edit_env`); nested documents are changed by key path (:func:`set_in`,
:func:`get_in`, :func:`delete_in`, :func:`rename_key`), a compose service's environment in
list or map form alike (:func:`compose_env`); SQLite schemas are changed idempotently, each
change in one transaction (:func:`add_column`, :func:`drop_column`, :func:`add_index`,
:func:`drop_index`, :func:`sqlite_transaction`).

Every helper is synchronous (migrations run in worker threads) and raises
:class:`~dopemux_update.EditError` with the file concerned when it cannot do its job::

    from dopemux_update import edit

    def migrate_forward(project_root: Path) -> bool:
        with edit.edit_yaml(project_root / "config" / "app.yaml") as doc:
            edit.set_in(doc, "broker.timeout_seconds", 30)
        edit.add_column(project_root / ".dopemux" / "conport.db", "decisions", "priority",
                        "INTEGER NOT NULL DEFAULT 3")
        return True
"""

from ._authoring._atomic import atomic_write, write_bytes, write_text
from ._authoring._edit_compose import compose_env
from ._authoring._edit_env import EnvFile, edit_env
from ._authoring._edit_files import move
from ._authoring._edit_json import edit_json
from ._authoring._edit_paths import KeyPath, delete_in, get_comment, get_in, rename_key, set_in
from ._authoring._edit_sqlite import (
    Database,
    add_column,
    add_index,
    column_exists,
    drop_column,
    drop_index,
    index_exists,
    quote_identifier,
    sqlite_transaction,
    table_exists,
)
from ._authoring._edit_yaml import edit_yaml, load_yaml, quoted
from ._core._exceptions import EditError

__all__ = [
    "Database",
    "EditError",
    "EnvFile",
    "KeyPath",
    "add_column",
    "add_index",
    "atomic_write",
    "column_exists",
    "compose_env",
    "delete_in",
    "drop_column",
    "drop_index",
    "edit_env",
    "edit_json",
    "edit_yaml",
    "get_comment",
    "get_in",
    "index_exists",
    "load_yaml",
    "move",
    "quote_identifier",
    "quoted",
    "rename_key",
    "set_in",
    "sqlite_transaction",
    "table_exists",
    "write_bytes",
    "write_text",
]
