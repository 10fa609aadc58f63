"""YAML files edited in place with ruamel.yaml's round-trip mode: comments, key order,
quoting and indentation are kept.

ruamel.yaml is an optional dependency (``pip install 'dopemux-update[yaml]'``), imported only
when a YAML helper is called. The indentation of block mappings and sequences is detected from
the file (defaults: 2 spaces, sequences indented under their key: ``key:\\n  - item``), CRLF
line endings and an explicit ``---`` are kept, and long lines are never re-wrapped.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ._atomic import read_text, saved_if_changed
from ._exceptions import EditError

__all__ = ["edit_yaml", "load_yaml", "quoted"]

_INSTALL_HINT = "ruamel.yaml is not installed: install dopemux-update[yaml]"
# A line holding only a block mapping key ("key:" or "key:  # comment"), value on later lines.
_KEY_ONLY = re.compile(r"""^(?:[^\s#'"\-?][^#]*?|'[^']*'|"[^"]*")\s*:\s*(?:#.*)?$""")
_EXPLICIT_START = re.compile(r"^---(?:\s|$)", re.MULTILINE)
_NO_WRAP = 1 << 16


class _Codec(NamedTuple):
    """A configured ruamel ``YAML`` instance and how to write the file back."""

    yaml: Any
    error: type[Exception]
    crlf: bool


class _Layout(NamedTuple):
    mapping: int = 2
    sequence: int = 4
    offset: int = 2
    crlf: bool = False
    explicit_start: bool = False


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Read the YAML file at ``path`` as a round-trip document (``CommentedMap`` & co.)."""
    doc, _ = _read(Path(path))
    return doc


@contextlib.contextmanager
def edit_yaml(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Yield the YAML document at ``path`` for in-place changes, then save it atomically.

    The file is rewritten only when the block ends without an exception *and* the document
    changed (its serialisation differs from the unchanged document's); otherwise it is not
    touched at all, not even its mtime. Only the parts the block changed are re-rendered:
    ruamel.yaml reproduces the rest, comments included.
    """
    target = Path(path)
    doc, codec = _read(target)
    with saved_if_changed(target, doc, lambda d: _dump(d, codec, target)) as edited:
        yield edited


def quoted(text: str) -> str:
    """``text`` as a string that YAML files get in double quotes: ``- "3007:3007"``.

    For values a YAML 1.1 reader (PyYAML, older docker-compose) would take for something
    else, such as ``12:30`` (a number in base 60) or ``yes`` (a boolean).
    """
    scalarstring = _ruamel(None, "ruamel.yaml.scalarstring")
    value: str = scalarstring.DoubleQuotedScalarString(text)  # a str subclass
    return value


def _ruamel(path: Path | None, module: str = "ruamel.yaml") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EditError(_INSTALL_HINT, path=path) from exc


def _read(path: Path) -> tuple[Any, _Codec]:
    ruamel = _ruamel(path)
    text = read_text(path)
    layout = _layout(text)
    yaml = ruamel.YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = _NO_WRAP
    yaml.indent(mapping=layout.mapping, sequence=layout.sequence, offset=layout.offset)
    yaml.explicit_start = layout.explicit_start
    try:
        doc = yaml.load(text.replace("\r\n", "\n") if layout.crlf else text)
    except ruamel.YAMLError as exc:
        raise EditError(f"not valid YAML: {exc}", path=path) from exc
    return doc, _Codec(yaml=yaml, error=ruamel.YAMLError, crlf=layout.crlf)


def _dump(doc: Any, codec: _Codec, path: Path) -> str:
    stream = io.StringIO()
    try:
        codec.yaml.dump(doc, stream)
    except codec.error as exc:
        raise EditError(f"cannot write the document as YAML: {exc}", path=path) from exc
    text = stream.getvalue()
    return text.replace("\n", "\r\n") if codec.crlf else text


def _layout(text: str) -> _Layout:
    """Guess the block indentation of ``text``: mapping indent, sequence indent, dash offset.

    Looks for the first ``key:`` line followed by a deeper nested key (mapping indent) and by
    a ``- item`` line (dash offset from the key, and where the item's content starts).
    """
    mapping: int | None = None
    sequence: int | None = None
    offset: int | None = None
    key_indent: int | None = None  # indent of the previous line, if it was "key:" alone
    for line in text.splitlines():
        content = line.lstrip(" ")
        if not content.strip() or content.startswith("#"):
            continue
        indent = len(line) - len(content)
        if key_indent is not None and indent > key_indent:
            if content.startswith("- ") and offset is None:
                offset = indent - key_indent
                item = content[1:]
                sequence = offset + 1 + len(item) - len(item.lstrip(" "))
            elif not content.startswith("-") and mapping is None:
                mapping = indent - key_indent
        elif key_indent == indent and content.startswith("- ") and offset is None:
            # "key:\n- item": the dash at the key's column
            offset = 0
            item = content[1:]
            sequence = 1 + len(item) - len(item.lstrip(" "))
        if mapping is not None and offset is not None:
            break
        key_indent = indent if _KEY_ONLY.match(content.rstrip()) else None
    step = mapping or 2
    if offset is None or sequence is None:
        offset, sequence = step, step + 2
    return _Layout(
        mapping=step,
        sequence=max(sequence, offset + 2),  # ruamel needs room for "- " after the offset
        offset=offset,
        crlf="\r\n" in text,
        explicit_start=_EXPLICIT_START.search(text) is not None,
    )
