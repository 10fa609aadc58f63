"""Read and change nested documents by key path, keeping ruamel.yaml's comments in place.

Works on plain ``dict``/``list`` documents (JSON) and on ruamel.yaml round-trip documents
(``CommentedMap``/``CommentedSeq``). For the latter, ruamel attaches the comment lines that
*follow* an entry to that entry's last scalar: the comment above ``health_check:`` belongs,
for ruamel, to the last line of the mapping before it. Appending a key naively would put the
new entry *below* that comment, and deleting the last entry would delete the comment. So
:func:`set_in` moves those trailing lines below a key it appends, and :func:`delete_in` gives
them to the entry that precedes the one it deletes: appending a key to an existing mapping
then deleting it gives back the original text byte for byte. Mappings that :func:`set_in`
created on the way (or put in place of a null) are not removed: they stay, as ``a: {}``.
"""

from __future__ import annotations

import importlib
from collections.abc import Hashable, Mapping, MutableMapping, Sequence
from typing import Any

from .._core._exceptions import EditError

__all__ = ["KeyPath", "delete_in", "get_comment", "get_in", "rename_key", "set_in"]

KeyPath = str | Sequence[Hashable]
"""``"a.b.c"`` (split on dots) or a sequence of keys, for keys containing dots or non-strings."""

_MAP_SLOT = 2  # ca.items[key][2]: comment after a mapping value
_SEQ_SLOT = 0  # ca.items[index][0]: comment after a sequence item


def _keys(path: KeyPath) -> tuple[Hashable, ...]:
    keys = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
    if not keys:
        raise EditError("empty key path")
    return keys


def _dotted(keys: Sequence[Hashable]) -> str:
    return ".".join(str(key) for key in keys) or "the document"


def get_in(doc: Any, path: KeyPath, default: Any = None) -> Any:
    """The value at ``path`` in ``doc``, or ``default`` when any key on the way is missing.

    Keys index mappings; an ``int`` key also indexes a list (in a sequence path).
    """
    node = doc
    for key in _keys(path):
        if isinstance(node, Mapping):
            if key not in node:
                return default
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node = node[key]
        else:
            return default
    return node


def set_in(doc: Any, path: KeyPath, value: Any, *, comment: str | None = None) -> None:
    """Set ``path`` in ``doc`` to ``value``, creating missing intermediate mappings.

    A new key is appended at the end of its mapping; an existing key keeps its place. With
    ``comment``, the key's line gets the end-of-line comment ``# {comment}`` (YAML documents
    only; see :func:`get_comment`). Raises :class:`EditError` when a key on the way holds
    something other than a mapping.
    """
    keys = _keys(path)
    if comment is not None and not _is_commented(doc):
        raise EditError(f"cannot comment {_dotted(keys)}: not a YAML round-trip document")
    node = doc
    holder: tuple[Any, Hashable] | None = None  # (mapping, key) holding node
    for depth, key in enumerate(keys[:-1]):
        _require_mapping(node, keys, depth)
        if node.get(key) is None:  # missing, or present but empty (`key:` alone)
            _put(node, key, type(node)() if _is_commented(node) else {}, holder)
        holder = (node, key)
        node = node[key]
    _require_mapping(node, keys, len(keys) - 1)
    _put(node, keys[-1], _commented_like(node, value), holder)
    if comment is not None:
        _set_eol_comment(node, keys[-1], comment)


def delete_in(doc: Any, path: KeyPath) -> bool:
    """Remove the key at ``path``; True if it was there, False if it (or a parent) was not.

    Only that key goes: a parent mapping it leaves empty stays, written ``a: {}`` in YAML.
    """
    keys = _keys(path)
    parents: list[tuple[Any, Hashable]] = []
    node = doc
    for key in keys[:-1]:
        if not isinstance(node, Mapping) or key not in node:
            return False
        parents.append((node, key))
        node = node[key]
    key = keys[-1]
    if not isinstance(node, MutableMapping) or key not in node:
        return False
    if not _is_commented(node):
        del node[key]
        return True
    siblings = list(node)
    index = siblings.index(key)
    tail = _detach_tail(node, key)
    del node[key]
    if tail:
        if index > 0:
            _attach_tail(node, siblings[index - 1], tail)
        elif not node and parents:
            # The parent is now `key: {}`, on one line, with the comment lines after it.
            _set_flow_style(node)
            _attach_tail(*parents[-1], tail)
        elif parents:
            _after_key_line(node, tail)
        else:
            _before_document_content(node, tail)
    return True


def rename_key(doc: Any, path: KeyPath, new_name: Hashable) -> bool:
    """Rename the key at ``path`` to ``new_name`` in place: same position, same value, and
    in a YAML document the same comments (on its line, and the lines after its value).

    ``rename_key(doc, ("services", "mcp-old"), "mcp-new")``. Returns True if it renamed the
    key, False if there is no key at ``path`` (already renamed, or never there). Raises
    :class:`EditError`, changing nothing, when the mapping already holds ``new_name``.
    """
    keys = _keys(path)
    parent = get_in(doc, keys[:-1]) if len(keys) > 1 else doc
    old = keys[-1]
    if not isinstance(parent, MutableMapping) or old not in parent:
        return False
    if new_name == old:
        return False
    if new_name in parent:
        raise EditError(
            f"cannot rename {_dotted(keys)} to {new_name!r}: "
            f"{_dotted(keys[:-1])} already has a key {new_name!r}"
        )
    position = list(parent).index(old)
    value = parent[old]
    if _is_commented(parent):
        commented: Any = parent
        entry = _items(commented).pop(old, None)
        del commented[old]
        commented.insert(position, new_name, value)
        if entry is not None:
            _items(parent)[new_name] = entry
            _shift_eol_comment(entry, len(str(new_name)) - len(str(old)))
        return True
    entries = list(parent.items())
    entries[position] = (new_name, value)
    parent.clear()
    parent.update(entries)
    return True


def get_comment(doc: Any, path: KeyPath) -> str | None:
    """The end-of-line comment on the line of the key at ``path``, without ``#``; else None."""
    keys = _keys(path)
    parent = get_in(doc, keys[:-1]) if len(keys) > 1 else doc
    if not _is_commented(parent) or not isinstance(parent, Mapping) or keys[-1] not in parent:
        return None
    entry = _items(parent).get(keys[-1])
    token = entry[_MAP_SLOT] if entry and len(entry) > _MAP_SLOT else None
    if token is None:
        return None
    first_line = str(token.value).split("\n", 1)[0].strip()
    return first_line[1:].strip() if first_line.startswith("#") else None


# --------------------------------------------------------------------------- internals


def _put(
    mapping: MutableMapping[Any, Any],
    key: Hashable,
    value: Any,
    holder: tuple[Any, Hashable] | None,
) -> None:
    """``mapping[key] = value``, moving the comment lines that follow the mapping's last
    entry (or, for an empty mapping, its ``holder`` entry's line) below a key appended."""
    if not _is_commented(mapping):
        mapping[key] = value
        return
    if key in mapping:
        tail = _detach_tail(mapping, key)
    elif mapping:
        tail = _detach_tail(mapping, next(reversed(mapping)))
    else:
        tail = _detach_tail(*holder) if holder is not None else ""
        node: Any = mapping
        if node.fa.flow_style():  # `key: {}` grows into a block mapping
            node.fa.set_block_style()
    mapping[key] = value
    _attach_tail(mapping, key, tail)


def _shift_eol_comment(entry: list[Any], delta: int) -> None:
    """Move the comment on a renamed key's line by the change in the key's width, so that
    the gap before it stays (renaming back gives the line back as it was)."""
    token = entry[_MAP_SLOT] if len(entry) > _MAP_SLOT else None
    if token is None or not str(token.value).startswith("#"):
        return
    mark = token.start_mark
    mark.column = max(mark.column + delta, 0)


def _set_flow_style(node: Any) -> None:
    node.fa.set_flow_style()


def _items(node: Any) -> Any:
    return node.ca.items


def _require_mapping(node: Any, keys: tuple[Hashable, ...], depth: int) -> None:
    if not isinstance(node, MutableMapping):
        raise EditError(
            f"cannot set {_dotted(keys)}: {_dotted(keys[:depth])} holds "
            f"{type(node).__name__}, not a mapping"
        )


def _is_commented(node: Any) -> bool:
    return hasattr(node, "ca") and isinstance(node, (MutableMapping, list))


def _comments_module() -> Any:
    # Only reached for a ruamel document, so ruamel.yaml is already imported.
    return importlib.import_module("ruamel.yaml.comments")


def _commented_like(parent: Any, value: Any) -> Any:
    """``value`` with plain dicts and lists turned into ruamel's, when ``parent`` is ruamel's,
    so that comments can be attached to their entries."""
    if not _is_commented(parent):
        return value
    comments = _comments_module()
    if isinstance(value, Mapping) and not _is_commented(value):
        return comments.CommentedMap((k, _commented_like(parent, v)) for k, v in value.items())
    if isinstance(value, list) and not _is_commented(value):
        return comments.CommentedSeq(_commented_like(parent, v) for v in value)
    return value


def _is_block(node: Any) -> bool:
    return _is_commented(node) and len(node) > 0 and not node.fa.flow_style()


def _leaf(container: Any, key: Any) -> tuple[Any, Any]:
    """The last scalar entry, in document order, of the subtree at ``container[key]``."""
    while _is_block(container[key]):
        container = container[key]
        key = next(reversed(container)) if isinstance(container, Mapping) else len(container) - 1
    return container, key


def _slot(container: Any) -> int:
    return _MAP_SLOT if isinstance(container, Mapping) else _SEQ_SLOT


def _detach_tail(container: Any, key: Any) -> str:
    """Remove and return the comment lines that follow the subtree at ``container[key]``,
    keeping its end-of-line comment in place."""
    leaf, leaf_key = _leaf(container, key)
    entry = leaf.ca.items.get(leaf_key)
    token = entry[_slot(leaf)] if entry else None
    if token is None:
        return ""
    head, newline, tail = str(token.value).partition("\n")
    if newline and head:
        token.value = head + newline
    elif newline:  # only the line's own newline is left: no comment at all
        entry[_slot(leaf)] = None
    return tail


def _new_token(text: str) -> Any:
    tokens = importlib.import_module("ruamel.yaml.tokens")
    error = importlib.import_module("ruamel.yaml.error")
    return tokens.CommentToken(text, error.CommentMark(0))


def _attach_tail(container: Any, key: Any, tail: str) -> None:
    """Put comment lines ``tail`` right after the subtree at ``container[key]``."""
    if not tail:
        return
    leaf, leaf_key = _leaf(container, key)
    entry = leaf.ca.items.setdefault(leaf_key, [None, None, None, None])
    slot = _slot(leaf)
    if entry[slot] is None:
        entry[slot] = _new_token("\n" + tail)
    else:
        _extend(entry[slot], tail)


def _after_key_line(node: Any, tail: str) -> None:
    """Put ``tail`` right after the line of the key holding the nested mapping ``node``."""
    if node.ca.comment is None:
        node.ca.comment = [None, None]
    if node.ca.comment[0] is None:
        # The token of a comment-less line starts with that line's own newline.
        node.ca.comment[0] = _new_token("\n" + tail)
    else:
        _extend(node.ca.comment[0], tail)


def _extend(token: Any, tail: str) -> None:
    text = str(token.value)
    token.value = (text if text.endswith("\n") else text + "\n") + tail


def _before_document_content(root: Any, tail: str) -> None:
    """Put ``tail`` after the comments that open the document (its first key was deleted)."""
    if root.ca.comment is None:
        root.ca.comment = [None, None]
    if root.ca.comment[1] is None:
        root.ca.comment[1] = []
    root.ca.comment[1].append(_new_token(tail))


def _set_eol_comment(mapping: Any, key: Hashable, comment: str) -> None:
    """Give ``key``'s line the comment ``# comment``, keeping the comment lines after it."""
    value = mapping[key]
    if _is_block(value):
        # The comment token of the key line; ruamel may share it with the nested value.
        entry = mapping.ca.items.get(key)
        old = entry[_MAP_SLOT] if entry else None
        tail = ""
        if old is not None:
            tail = str(old.value).partition("\n")[2]
        mapping.yaml_add_eol_comment(comment, key)
        new = mapping.ca.items[key][_MAP_SLOT]
        if old is not None and value.ca.comment and value.ca.comment[0] is old:
            value.ca.comment[0] = new
    else:
        tail = _detach_tail(mapping, key)
        mapping.yaml_add_eol_comment(comment, key)
        new = mapping.ca.items[key][_MAP_SLOT]
    if tail:
        _extend(new, tail)
