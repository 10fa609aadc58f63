"""Helpers for migrations to change an installation safely.

Files are replaced atomically (:func:`write_text`, :func:`write_bytes`, :func:`atomic_write`);
YAML files are edited in place keeping comments, key order and formatting (:func:`edit_yaml`,
needs ``dopemux-update[yaml]``); JSON files keep their key order and indentation
(:func:`edit_json`); nested documents are changed by key path (:func:`set_in`,
:func:`get_in`, :func:`delete_in`); SQLite schemas are changed idempotently, each change in
one transaction (:func:`add_column`, :func:`drop_column`, :func:`sqlite_transaction`).

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

from ._atomic import atomic_write, write_bytes, write_text
from ._edit_json import edit_json
from ._edit_paths import KeyPath, delete_in, get_comment, get_in, set_in
from ._edit_sqlite import (
    Database,
    add_column,
    column_exists,
    drop_column,
    quote_identifier,
    sqlite_transaction,
    table_exists,
)
from ._edit_yaml import edit_yaml, load_yaml, quoted
from ._exceptions import EditError

__all__ = [
    "Database",
    "EditError",
    "KeyPath",
    "add_column",
    "atomic_write",
    "column_exists",
    "delete_in",
    "drop_column",
    "edit_json",
    "edit_yaml",
    "get_comment",
    "get_in",
    "load_yaml",
    "quote_identifier",
    "quoted",
    "set_in",
    "sqlite_transaction",
    "table_exists",
    "write_bytes",
    "write_text",
]
