"""A compose service's ``environment:``, in list form or map form, as one mapping.

Compose files write a service's environment either as a list::

    environment:
      - POSTGRES_USER=dopemux
      - LEAN_MCP_TOKEN          # a bare name: taken from the shell

or as a map::

    environment:
      BROKER_LOG_LEVEL: debug

:func:`compose_env` reads and changes both the same way, writing back in the form the file
uses; comments stay where they were (on an entry's line, and the lines after the last entry).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from .._core._exceptions import EditError
from ._edit_paths import _attach_tail, _detach_tail, _is_commented, delete_in, get_in, set_in

__all__ = ["compose_env"]


def compose_env(doc: Any, service: str) -> MutableMapping[str, str | None]:
    """The ``environment:`` of ``service`` in the compose document ``doc`` (from
    :func:`edit_yaml`), as a mapping of names to values (None for a bare ``- NAME``).

    Changes are made in the document, in the file's form: ``- KEY=VALUE`` items in a list
    (a changed item keeps its place, quotes and comment; a new one is appended, quoted when
    all the others are), ``KEY: VALUE`` entries in a map. A service without ``environment:``
    gets one in map form when a key is set. Map values that are numbers or booleans read as
    compose passes them on (``3``, ``true``). Raises :class:`EditError` when the document
    has no such service, or its ``environment:`` is neither a list nor a map.
    """
    services = get_in(doc, ("services",))
    if not isinstance(services, Mapping) or not isinstance(services.get(service), Mapping):
        raise EditError(f"the compose file has no service {service!r}")
    return _Environment(doc, service)


class _Environment(MutableMapping[str, "str | None"]):
    def __init__(self, doc: Any, service: str) -> None:
        self._doc = doc
        self._service = service

    @property
    def _path(self) -> tuple[str, str, str]:
        return ("services", self._service, "environment")

    def _node(self) -> Any:
        node = get_in(self._doc, self._path)
        if node is not None and not isinstance(node, (Mapping, list)):
            raise EditError(
                f"services.{self._service}.environment holds {type(node).__name__}, "
                "not a list or a map"
            )
        return node

    def _items(self) -> list[tuple[int, str, str | None]]:
        """(index, name, value) of every list item, in file order."""
        node = self._node()
        items: list[tuple[int, str, str | None]] = []
        for index, item in enumerate(node):
            name, sep, value = str(item).partition("=")
            items.append((index, name, value if sep else None))
        return items

    def __getitem__(self, key: str) -> str | None:
        node = self._node()
        if isinstance(node, Mapping):
            if key not in node:
                raise KeyError(key)
            return _as_text(node[key])
        for _index, name, value in reversed(self._items() if node is not None else []):
            if name == key:
                return value
        raise KeyError(key)

    def __setitem__(self, key: str, value: str | None) -> None:
        if not isinstance(key, str) or not key or "=" in key:
            raise EditError(f"not a valid environment variable name: {key!r}")
        node = self._node()
        if node is None or isinstance(node, Mapping):
            if node is not None and key in node and _as_text(node[key]) == value:
                return
            set_in(self._doc, (*self._path, key), value)
            return
        text = key if value is None else f"{key}={value}"
        matches = [index for index, name, _value in self._items() if name == key]
        if matches:
            index = matches[-1]
            if str(node[index]) != text:
                node[index] = _styled_like(node[index], text)
            return
        last = len(node) - 1
        tail = _detach_tail(node, last) if last >= 0 and _is_commented(node) else ""
        kinds = {type(item) for item in node}
        # Quoted like the others when they all are; else plain.
        node.append(_styled_like(node[last], text) if len(kinds) == 1 else text)
        if tail:
            _attach_tail(node, len(node) - 1, tail)

    def __delitem__(self, key: str) -> None:
        node = self._node()
        if node is None:
            raise KeyError(key)
        if isinstance(node, Mapping):
            if key not in node:
                raise KeyError(key)
            delete_in(self._doc, (*self._path, key))
            return
        matches = [index for index, name, _value in self._items() if name == key]
        if not matches:
            raise KeyError(key)
        for index in reversed(matches):
            last = len(node) - 1
            if index == last and index > 0 and _is_commented(node):
                tail = _detach_tail(node, index)
                del node[index]
                _attach_tail(node, index - 1, tail)
            else:
                del node[index]

    def __iter__(self) -> Iterator[str]:
        node = self._node()
        if node is None:
            return iter(())
        if isinstance(node, Mapping):
            return iter([str(key) for key in node])
        return iter(dict.fromkeys(name for _index, name, _value in self._items()))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _styled_like(example: Any, text: str) -> Any:
    """``text`` as the same kind of scalar as ``example`` (double-quoted, single-quoted)."""
    kind = type(example)
    if kind is not str and isinstance(example, str):
        return kind(text)  # ruamel's quoted scalar strings are str subclasses
    return text
